# Stage 3: one linear probe per (model, prompt, layer, CLS variant). Checkpoints go to
# <results>/checkpoints/, which is not a declared output, so Snakemake's cleanup of a failed job
# keeps them. A pad-geometry probe also writes whole_image_per_image.npz (not declared, so that
# the centre-crop probes' outputs stay as they were; written before metrics.json, the last file).
#
# Why the store manifest is `ancient` and the fingerprint is a file: extending a store (a new
# layer) rewrites its manifest, which must not rerun the probes of the layers it already had.
# A probe reruns when its own fingerprint file changes, which happens exactly when the
# fingerprint (its layer's features + probe settings) does. A job rule with no inputs is never
# masked by Snakemake's needrun propagation, so this holds also when a store is extended and
# probe settings change in the same edit.


localrules:
    probe_fingerprint,


rule probe_fingerprint:
    output:
        "<results>/fingerprints/probes/{model}/{prompt}/{probe}.txt",
    params:
        fingerprint=fingerprint("probe"),
    log:
        "<results>/logs/probe_fingerprint/{model}/{prompt}/{probe}.log",
    conda:
        "../../envs/layerprobe.yaml"
    shell:
        "echo {params.fingerprint:q} > {output:q} 2> {log:q}"


rule probe:
    input:
        store=ancient("<results>/features/{model}/{prompt}.manifest.json"),
        fingerprint="<results>/fingerprints/probes/{model}/{prompt}/{probe}.txt",
        data=ancient(probe_data_manifest),  # pad geometry only: the original annotations
    output:
        metrics="<results>/probes/{model}/{prompt}/{probe}/metrics.json",
        epochs="<results>/probes/{model}/{prompt}/{probe}/epochs.csv",
        predictions="<results>/probes/{model}/{prompt}/{probe}/predictions.npz",
        per_image="<results>/probes/{model}/{prompt}/{probe}/per_image.npz",
    params:
        store=store_path,
        checkpoint=results("<results>/checkpoints/{model}/{prompt}/{probe}.pt"),
        fingerprint=fingerprint("probe"),
    log:
        "<results>/logs/probe/{model}/{prompt}/{probe}.log",
    benchmark:
        "<results>/benchmarks/probe/{model}/{prompt}/{probe}.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    # probe.threads; the script pins torch to it (from the config), so float reductions (and so
    # the metrics) are the same under every executor: a resumed SLURM job matches a local run.
    threads: threads("probe")
    resources:
        mem_mb=mem_mb("probe"),
        runtime=runtime("probe"),
        gpu=gpus("probe"),
    script:
        "../scripts/probe.py"
