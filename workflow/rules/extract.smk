# Stage 2: per-layer features into one chunked Zarr store per (model, prompt).
# prepare_store alone creates, extends (new layers) or discards (fingerprint changed) the store;
# the parts then only write disjoint chunk ranges; finalize_store checks and writes the manifest.
# The declared outputs are small JSON files written last; the store itself is not declared, so a
# failed or killed job keeps its finished chunks and the retry resumes from them.


rule build_tiny_model:
    output:
        "<results>/models/{model}.built",
    params:
        fingerprint=fingerprint("tiny_model"),  # the `tiny` block only: new layers never rebuild it
    log:
        "<results>/logs/build_tiny_model/{model}.log",
    benchmark:
        "<results>/benchmarks/build_tiny_model/{model}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("build_tiny_model"),
        runtime=runtime("build_tiny_model"),
    script:
        "../scripts/build_tiny_model.py"


rule prepare_store:
    input:
        data=data_manifest,
    output:
        "<results>/features/{model}/{prompt}.layout.json",
    params:
        store=store_path,
        fingerprint=fingerprint("store"),
        layers=store_keys,
    log:
        "<results>/logs/prepare_store/{model}/{prompt}.log",
    benchmark:
        "<results>/benchmarks/prepare_store/{model}/{prompt}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("prepare_store"),
        runtime=runtime("prepare_store"),
    script:
        "../scripts/prepare_store.py"


rule extract:
    input:
        layout="<results>/features/{model}/{prompt}.layout.json",
        data=data_manifest,
        model=model_inputs,
    output:
        "<results>/features/{model}/{prompt}.part{part}.json",
    params:
        store=store_path,
        parts=PARTS,
        fingerprint=fingerprint("store"),
        layers=store_keys,
    log:
        "<results>/logs/extract/{model}/{prompt}.part{part}.log",
    benchmark:
        "<results>/benchmarks/extract/{model}/{prompt}.part{part}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    threads: threads("extract")  # extract.threads: pinned by the script (layerprobe.devices)
    resources:
        mem_mb=mem_mb("extract"),
        runtime=runtime("extract"),
        gpu=gpus("extract"),
    script:
        "../scripts/extract.py"


rule finalize_store:
    input:
        layout="<results>/features/{model}/{prompt}.layout.json",
        parts=store_parts,
    output:
        "<results>/features/{model}/{prompt}.manifest.json",
    params:
        store=store_path,
        fingerprint=fingerprint("store"),
        layers=store_keys,
    log:
        "<results>/logs/finalize_store/{model}/{prompt}.log",
    benchmark:
        "<results>/benchmarks/finalize_store/{model}/{prompt}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("finalize_store"),
        runtime=runtime("finalize_store"),
    script:
        "../scripts/finalize_store.py"
