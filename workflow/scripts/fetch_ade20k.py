"""Rule fetch_ade20k (localrule): the official archive, verified and unpacked atomically at dataset.root."""
import json
from pathlib import Path

from layerprobe.data.ade20k import check_layout
from layerprobe.data.download import fetch_ade20k
from layerprobe.job import job

with job(snakemake):
    root = Path(snakemake.params.root)
    if root.exists():  # already there (an earlier download, or put there by hand): check, don't fetch
        info = {"root": str(root), "downloaded": False, "images": check_layout(root)}
    else:
        info = {**fetch_ade20k(snakemake.params.url, snakemake.params.checksum, root), "downloaded": True}
    Path(snakemake.output[0]).write_text(json.dumps(info, indent=2))
