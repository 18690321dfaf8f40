# Stage 3: one linear probe per (model, prompt, layer). Checkpoints go to results/checkpoints/,
# which is not a declared output, so Snakemake's cleanup of a failed job keeps them.


rule probe:
    input:
        store_manifest,
    output:
        metrics="results/probes/{model}/{prompt}/{layer}/metrics.json",
        epochs="results/probes/{model}/{prompt}/{layer}/epochs.csv",
        predictions="results/probes/{model}/{prompt}/{layer}/predictions.npz",
    params:
        store="results/features/{model}/{prompt}.zarr",
        checkpoint="results/checkpoints/{model}/{prompt}/{layer}.pt",
    log:
        "results/logs/probe/{model}/{prompt}/{layer}.log",
    benchmark:
        "results/benchmarks/probe/{model}/{prompt}/{layer}.tsv"
    # The script pins torch to this many threads, so float reductions (and so the metrics) are
    # the same under every executor; a resumed SLURM job must match an uninterrupted local run.
    threads: 1
    resources:
        mem_mb=mem_mb("probe"),
        runtime=runtime("probe"),
        gpu=gpus("probe"),
    script:
        "../scripts/probe.py"
