# Stage 1: the dataset (synthetic for the demo) preprocessed once per model input resolution and
# geometry: centre crop -> {res}px, pad -> {res}px_pad. Pad has a rule and script of its own
# because Snakemake reruns a job whose script is newer than its outputs: the centre-crop rule and
# script stay untouched. `fingerprint` covers the dataset's content (a digest of the files, or the
# synthetic settings), the subset, the resolution and (pad) the geometry: data changed in place
# under the same names reruns everything.


rule synthetic_dataset:
    output:
        "<results>/dataset/synthetic.json",
    params:
        root=DATASET["root"],
        synthetic=DATASET["synthetic"],
    log:
        "<results>/logs/synthetic_dataset.log",
    benchmark:
        "<results>/benchmarks/synthetic_dataset/synthetic_dataset.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("synthetic_dataset"),
        runtime=runtime("synthetic_dataset"),
    script:
        "../scripts/synthetic_dataset.py"


rule preprocess:
    input:
        dataset_marker,
    output:
        "<results>/data/{res}px.json",
    params:
        root=DATASET["root"],
        max_images=DATASET["max_images"],
        store=results("<results>/data/{res}px.zarr"),
        fingerprint=fingerprint("data"),
    log:
        "<results>/logs/preprocess/{res}px.log",
    benchmark:
        "<results>/benchmarks/preprocess/{res}px.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("preprocess"),
        runtime=runtime("preprocess"),
    script:
        "../scripts/preprocess.py"


rule preprocess_pad:
    input:
        dataset_marker,
    output:
        "<results>/data/{res}px_pad.json",
    params:
        root=DATASET["root"],
        max_images=DATASET["max_images"],
        store=results("<results>/data/{res}px_pad.zarr"),
        fingerprint=fingerprint("data_pad"),
    log:
        "<results>/logs/preprocess/{res}px_pad.log",
    benchmark:
        "<results>/benchmarks/preprocess/{res}px_pad.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("preprocess"),
        runtime=runtime("preprocess"),
    script:
        "../scripts/preprocess_pad.py"
