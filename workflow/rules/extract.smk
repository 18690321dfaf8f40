# Stage 2: per-layer features into one chunked Zarr store per (model, prompt).
# The declared outputs are small JSON files written last; the store itself is not declared, so a
# failed or killed job keeps its finished chunks and the retry resumes from them.


rule build_tiny_model:
    output:
        "results/models/{model}.built",
    params:
        model=lambda wildcards: MODELS[wildcards.model],
    log:
        "results/logs/build_tiny_model/{model}.log",
    benchmark:
        "results/benchmarks/build_tiny_model/{model}.tsv"
    resources:
        mem_mb=mem_mb("build_tiny_model"),
        runtime=runtime("build_tiny_model"),
    script:
        "../scripts/build_tiny_model.py"


rule extract:
    input:
        data=data_manifest,
        model=model_inputs,
    output:
        "results/features/{model}/{prompt}.part{part}.json",
    params:
        store="results/features/{model}/{prompt}.zarr",
        parts=PARTS,
    log:
        "results/logs/extract/{model}/{prompt}.part{part}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{prompt}.part{part}.tsv"
    resources:
        mem_mb=mem_mb("extract"),
        runtime=runtime("extract"),
        gpu=gpus("extract"),
    script:
        "../scripts/extract.py"


rule finalize_store:
    input:
        store_parts,
    output:
        "results/features/{model}/{prompt}.manifest.json",
    params:
        store="results/features/{model}/{prompt}.zarr",
    log:
        "results/logs/finalize_store/{model}/{prompt}.log",
    benchmark:
        "results/benchmarks/finalize_store/{model}/{prompt}.tsv"
    resources:
        mem_mb=mem_mb("finalize_store"),
        runtime=runtime("finalize_store"),
    script:
        "../scripts/finalize_store.py"
