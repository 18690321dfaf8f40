"""Rule preprocess_pad: images and labels padded to a square at one resolution (layerprobe.data.geometry),
with content boxes and the validation annotations at original size, into a uint8 Zarr store."""
from layerprobe.data.preprocess import preprocess
from layerprobe.job import job

with job(snakemake, "data_pad") as run:
    preprocess(snakemake.params.root, snakemake.params.store, snakemake.output[0], int(snakemake.wildcards.res),
               snakemake.params.max_images, run.fingerprint.record(), geometry="pad")
