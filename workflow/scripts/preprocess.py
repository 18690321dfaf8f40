"""Rule preprocess: resize/crop images and labels to one resolution, into a uint8 Zarr store."""
from layerprobe.data.preprocess import preprocess
from layerprobe.job import job

with job(snakemake, "data") as run:
    preprocess(snakemake.params.root, snakemake.params.store, snakemake.output[0], int(snakemake.wildcards.res),
               snakemake.params.max_images, run.fingerprint.record())
