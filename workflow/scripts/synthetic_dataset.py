"""Rule synthetic_dataset: write the demo's ADE20K-layout dataset."""
import json

from layerprobe.data.synthetic import write_dataset
from layerprobe.job import job

with job(snakemake):
    params = snakemake.params.synthetic
    root = write_dataset(snakemake.params.root, **params)
    with open(snakemake.output[0], "w") as f:
        json.dump({"root": str(root), **params}, f, indent=2)
