"""Rule fetch_weights (localrule): one model's weights into weights.cache_dir, with the libraries' own download code."""
import json
from pathlib import Path

from layerprobe import config as lp_config
from layerprobe.models import weights
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    name, model = weights.model_for_source(cfg, snakemake.wildcards.source)
    manifest = weights.fetch(name, model, snakemake.params.cache_dir, planned=dict(snakemake.params.weights))
    print(f"{name}: {len(manifest['files'])} files in {manifest['cache_dir']}"
          + (f", commit {manifest['commit']}" if "commit" in manifest else ""))
    Path(snakemake.output[0]).write_text(json.dumps(manifest, indent=2))
