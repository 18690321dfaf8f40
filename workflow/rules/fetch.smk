# Stage 0: stage what comes from the network, where the network is. Both are localrules: they
# run beside the controller (the login node, or the head job), never on a compute node, and
# every compute job then runs offline.


localrules:
    fetch_ade20k,
    fetch_weights,


rule fetch_ade20k:
    output:
        "<results>/dataset/ade20k.json",
    params:
        root=DATASET["root"],
        url=DATASET["url"],
        checksum=DATASET["checksum"],
    log:
        "<results>/logs/fetch_ade20k.log",
    conda:
        "../../envs/layerprobe.yaml"
    script:
        "../scripts/fetch_ade20k.py"


rule fetch_weights:
    output:
        "<results>/weights/{source}.json",  # one per download: models sharing a hub id share it
    params:
        cache_dir=CFG["weights"]["cache_dir"],
        weights=source_weights,  # the commit planned with: a moved ref fetches again
    log:
        "<results>/logs/fetch_weights/{source}.log",
    conda:
        "../../envs/layerprobe.yaml"
    script:
        "../scripts/fetch_weights.py"
