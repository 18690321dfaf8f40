"""Rule fetch_weights (localrule): one model's weights into weights.cache_dir, with the libraries' own download code."""
import json
from pathlib import Path

from layerprobe.job import job
from layerprobe.models import weights

with job(snakemake) as run:
    name, model = weights.model_for_source(run.config, snakemake.wildcards.source)
    manifest = weights.fetch(name, model, snakemake.params.cache_dir, planned=dict(snakemake.params.weights))
    print(f"{name}: {len(manifest['files'])} files in {manifest['cache_dir']}"
          + (f", commit {manifest['commit']}" if "commit" in manifest else ""))
    Path(snakemake.output[0]).write_text(json.dumps(manifest, indent=2))
