"""Rule finalize_store: verify every chunk of every part is written, then write the manifest."""
from layerprobe.logs import redirect_output
from layerprobe.store import finalize

with redirect_output(snakemake.log[0]):
    manifest = finalize(snakemake.params.store, snakemake.output[0])
    print(f"store complete: {manifest['store']} ({manifest['bytes']} bytes)")
