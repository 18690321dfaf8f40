"""Rule preprocess: resize/crop images and labels to one resolution, into a uint8 Zarr store."""
from layerprobe.data import preprocess
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    preprocess(snakemake.params.root, snakemake.params.store, snakemake.output[0], int(snakemake.wildcards.res),
               snakemake.params.max_images, snakemake.params.chunk_images)
