"""What layerprobe keeps between processes in the working directory, beside Snakemake's own
state: caches only, each keyed so that a stale entry is never used (delete the folder freely)."""

from __future__ import annotations

from pathlib import Path

STATE = Path(".snakemake/layerprobe")
FILE_DIGESTS = STATE / "file-digests.json"  # data.digest.DigestCache: content digests by size and mtime
SPECS = STATE / "specs"  # models.specs.memo: model specs computed through transformers
