"""Rule synthetic_dataset: write the demo's ADE20K-layout dataset."""
import json

from layerprobe.logs import redirect_output
from layerprobe.data.synthetic import write_dataset

with redirect_output(snakemake.log[0]):
    params = snakemake.params.synthetic
    root = write_dataset(snakemake.params.root, **params)
    with open(snakemake.output[0], "w") as f:
        json.dump({"root": str(root), **params}, f, indent=2)
