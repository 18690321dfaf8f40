"""Specs read through transformers' config classes, remembered across processes.

Why: importing transformers' config classes imports torch and torchvision, seconds per process
(measured in the closing note of issue 21), and every Snakemake invocation, dry run and job
validates its config, which needs every model's spec. A spec is a pure function of the model's
config entry and of the hub JSON files it looks up, so it is kept in the working directory
(`state.SPECS`), keyed by the entry, the weights cache, transformers' version and the source of
this package's spec code, and used only while every lookup it made (`hub.find_json`) still finds
the same file with the same bytes: an edited config.json, a moved snapshot or a new local
directory recomputes it. Errors are never kept. An unwritable directory only costs the time.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ...state import SPECS
from .core import ModelSpec

# The lookups of the spec being computed: [hub_id, filename, cache_dir, path or None, sha256 or None].
_lookups: contextvars.ContextVar[list[list[Any]] | None] = contextvars.ContextVar("spec_lookups", default=None)


def note_lookup(hub_id: str, filename: str, cache_dir: str | None, path: Path | None) -> None:
    """Called by `hub.find_json`: what a spec being computed depends on."""
    lookups = _lookups.get()
    if lookups is not None:
        lookups.append([hub_id, filename, cache_dir, None if path is None else str(path), _sha256(path)])


def remembered(compute: Callable[[], ModelSpec], kind: str, model_json: str, cache_dir: str | None) -> ModelSpec:
    """compute(), or the spec it gave before for the same inputs."""
    file = SPECS / f"{_key(kind, model_json, cache_dir)}.json"
    spec = _load(file)
    if spec is not None:
        return spec
    token = _lookups.set([])
    try:
        spec = compute()
        lookups = _lookups.get()
    finally:
        _lookups.reset(token)
    _store(file, spec, lookups or [])
    return spec


def _key(kind: str, model_json: str, cache_dir: str | None) -> str:
    try:
        library = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        library = None
    parts = [kind, model_json, cache_dir, library, _code_digest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _load(file: Path) -> ModelSpec | None:
    try:
        record = json.loads(file.read_text())
        spec = ModelSpec(**record["spec"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    from .hub import find_json

    for hub_id, filename, cache_dir, path, sha in record["lookups"]:
        found = find_json(hub_id, filename, cache_dir)
        if (None if found is None else str(found)) != path or _sha256(found) != sha:
            return None
    return spec


def _store(file: Path, spec: ModelSpec, lookups: list[list[Any]]) -> None:
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"spec": asdict(spec), "lookups": lookups}))
        os.replace(tmp, file)  # atomic: a parallel job reads the old file or this one, never half
    except OSError:
        tmp.unlink(missing_ok=True)
