# Stage 3b: the layer scan. Closed-form ridge probes for every layer of a (model, prompt), fitted
# while the model runs (no feature store): one CSV ranking the layers per (model, prompt), and a
# JSON sidecar with its fingerprint (data, model, prompt and scan settings).
from layerprobe.scan import cost as lp_scan_cost


def scan_mem_mb(wildcards, attempt):
    """The extraction job's RAM, plus the ridge statistics when they live in host RAM (no GPU)."""
    base = lp_resources.mem_mb("scan", CFG, wildcards, attempt)
    return base + lp_scan_cost.host_stats_mb(CFG, wildcards.model, lp_resources.gpus("scan", CFG) > 0)


def scan_runtime(wildcards, attempt):
    return lp_resources.runtime_min("scan", CFG, wildcards, attempt)


rule scan:
    input:
        data=data_manifest,
        model=model_inputs,
    output:
        table="results/scan/{model}/{prompt}.csv",
        fingerprint="results/scan/{model}/{prompt}.json",
    params:
        fingerprint=scan_fingerprint,
    log:
        "results/logs/scan/{model}/{prompt}.log",
    benchmark:
        "results/benchmarks/scan/{model}/{prompt}.tsv"
    resources:
        mem_mb=scan_mem_mb,
        runtime=scan_runtime,
        gpu=gpus("scan"),
    script:
        "../scripts/scan.py"
