"""Content digest of an ADE20K-layout dataset, so a file changed in place is seen at DAG build.

Why content and not modification times: a re-download unpacks the same bytes with new times,
and `cp`/`rsync` can keep old times on new bytes. Hashing ~1 GB (ADE20K) every DAG build would
be slow on a parallel file system, so per-file digests are cached by (size, mtime_ns, inode):
only files whose stat changed are read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from ..state import FILE_DIGESTS
from . import ade20k
from .preprocess import select

# Beside Snakemake's own metadata of the working directory: a cache of this directory's runs, shared
# by every config run here (keyed by absolute path, size, mtime and inode), not a result.
CACHE = FILE_DIGESTS


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


class DigestCache:
    """{absolute path: (stat key, sha256)}; read once, written atomically when it grew."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.changed = path, False
        self.entries: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache only costs a re-hash

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        stat = _stat_key(path.stat())
        entry = self.entries.get(key)
        if entry is not None and entry[0] == stat:
            return entry[1]
        value = file_digest(path)
        self.entries[key] = [stat, value]
        self.changed = True
        return value

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)  # concurrent writers each leave a whole file


def dataset_digest(root: str | Path, max_images: dict[str, int | None], cache: Path | None = CACHE) -> str:
    """sha256 over (split, id, image digest, annotation digest) of the samples preprocessing reads."""
    digests = DigestCache(cache)
    total = hashlib.sha256()
    for split in ade20k.SPLITS:
        for sample in select(ade20k.list_samples(root, split), max_images.get(split)):
            line = f"{split}\t{sample.image_id}\t{sample.image.name}\t{digests.digest(sample.image)}\t" \
                   f"{digests.digest(sample.annotation)}\n"
            total.update(line.encode())
    if digests.changed:
        print(f"layerprobe: hashed dataset files under {root} (cached in {cache})", file=sys.stderr)
    digests.save()
    return total.hexdigest()[:16]
