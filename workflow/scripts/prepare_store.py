"""Rule prepare_store: create, extend or discard one feature store, before any part writes to it."""
import json

from layerprobe.features import store
from layerprobe.features.extract import layout_for
from layerprobe.job import job

with job(snakemake, "store") as run:
    layout = layout_for(run.config, run.model_name, snakemake.wildcards.prompt, run.data_store(), run.fingerprint)
    keys = list(snakemake.params.layers)
    done = store.prepare(snakemake.params.store, layout, keys)
    with open(snakemake.output[0], "w") as f:
        json.dump({"store": snakemake.params.store, "keys": keys, **done}, f, indent=2)
