"""Rule finalize_store: verify every chunk holds every layer, then write the manifest."""
import json

from layerprobe.features.store import finalize
from layerprobe.job import job

with job(snakemake):
    keys = json.load(open(snakemake.input.layout))["keys"]
    manifest = finalize(snakemake.params.store, snakemake.output[0], keys)
    print(f"store complete: {manifest['store']} ({manifest['bytes']} bytes), layers {manifest['layers']}")
