"""Rule preprocess_pad: images and labels padded to a square at one resolution (layerprobe.data.geometry),
with content boxes and the validation annotations at original size, into a uint8 Zarr store.
A script of its own so that the centre-crop rule's script, and with it its jobs, stay as they were."""
from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.data.preprocess import preprocess
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    res = int(snakemake.wildcards.res)
    fingerprint = lp_fp.expect(lp_fp.data(lp_config.validate(snakemake.config), res, "pad"),
                               snakemake.params.fingerprint, snakemake.output[0])
    preprocess(snakemake.params.root, snakemake.params.store, snakemake.output[0], res, snakemake.params.max_images,
               fingerprint.record(), geometry="pad")
