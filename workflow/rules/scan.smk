# Stage 3b: the layer scan. Closed-form ridge probes for every layer of a (model, prompt), fitted
# while the model runs (no feature store): one CSV ranking the layers per (model, prompt), and a
# JSON sidecar with its fingerprint (data, model, prompt and scan settings).


rule scan:
    input:
        data=data_manifest,
        model=model_inputs,
    output:
        table="<results>/scan/{model}/{prompt}.csv",
        fingerprint="<results>/scan/{model}/{prompt}.json",
    params:
        fingerprint=fingerprint("scan"),
    log:
        "<results>/logs/scan/{model}/{prompt}.log",
    benchmark:
        "<results>/benchmarks/scan/{model}/{prompt}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    threads: threads("scan")  # scan.threads: pinned by the script (layerprobe.devices)
    resources:
        mem_mb=mem_mb("scan"),  # the model, plus the ridge statistics when they live in host RAM
        runtime=runtime("scan"),
        gpu=gpus("scan"),
    script:
        "../scripts/scan.py"
