"""Rule build_tiny_model: a random tiny model saved where the config's path points (demo/tests)."""
import json
from pathlib import Path

from layerprobe.job import job
from layerprobe.models import weights
from layerprobe.models.tiny import build

with job(snakemake) as run:
    path = build(run.model)
    # The digest of what was built: a tiny model changed by hand afterwards is refused at DAG build.
    Path(snakemake.output[0]).write_text(json.dumps({"path": str(path), **run.model["tiny"],
                                                     "digest": weights.tiny_digest(run.model),
                                                     "fingerprint": snakemake.params.fingerprint}, indent=2))
