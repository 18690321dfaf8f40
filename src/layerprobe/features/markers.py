"""A feature store's progress on disk: per chunk, a marker naming the layers it holds, and the
writers' temporary files a kill can leave behind.

Markers: `{store}/.progress/{split}/{chunk:06d}.json` = {"layers": [...], "prompts": [...],
"dtype", "device", "versions"}, rewritten atomically by the one part that owns the chunk after
its arrays are on disk. A killed job redoes exactly the (chunk, layer) pairs no marker lists.
A chunk file is written as `.{name}.{id}.partial` and renamed into place; one a SIGKILL left is
removed before the chunk is written again, or by the sweeps of prepare_store and finalize_store.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

LABELS = "labels"
# Temporary files a writer renames into place: a chunk file's, a marker's. A SIGKILL can leave them.
PARTIAL, MARKER_TMP = ".partial", ".tmp"
log = logging.getLogger("layerprobe.store")


class PrecisionMismatch(RuntimeError):
    """A part would compute features with another dtype or device than the store's chunks were."""


def marker(path: str | Path, split: str, chunk: int) -> Path:
    return Path(path) / ".progress" / split / f"{chunk:06d}.json"


def read_marker(path: str | Path, split: str, chunk: int) -> dict[str, Any] | None:
    try:
        return json.loads(marker(path, split, chunk).read_text())
    except FileNotFoundError:
        return None


def write_marker(path: str | Path, split: str, chunk: int, info: dict[str, Any]) -> None:
    """Atomic: write a temp file then rename, so a marker is never half-written."""
    target = marker(path, split, chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    for orphan in target.parent.glob(f"{target.name}.*{MARKER_TMP}"):  # a killed writer's
        orphan.unlink(missing_ok=True)
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}{MARKER_TMP}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, target)


def remove_orphans(chunk_path: Path) -> None:
    """Temporary files of one chunk file left by a killed writer (`.{name}.{id}.partial` beside it)."""
    try:
        names = os.listdir(chunk_path.parent)
    except FileNotFoundError:
        return
    prefix = f".{chunk_path.name}."
    for name in names:
        if name.startswith(prefix) and name.endswith(PARTIAL):
            (chunk_path.parent / name).unlink(missing_ok=True)


def temporary_files(path: Path) -> list[Path]:
    """Every writer's temporary file in a store: chunk files and markers not renamed into place."""
    return [p for p in path.rglob(f".*{PARTIAL}") if p.is_file()] + \
        [p for p in (path / ".progress").rglob(f"*{MARKER_TMP}") if p.is_file()]


def sweep_orphans(path: str | Path) -> int:
    """Remove what killed writers left in a store. Only for a job that no part runs beside
    (prepare_store, finalize_store): a live part's temporary file would look the same."""
    orphans = temporary_files(Path(path))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    if orphans:
        log.info("removed %d temporary files left by killed writers in %s (e.g. %s)", len(orphans), path,
                 orphans[0].relative_to(path))
    return len(orphans)


def _markers(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for marker_file in sorted((Path(path) / ".progress").glob("*/*.json")):
        try:
            out.append(json.loads(marker_file.read_text()))
        except (OSError, ValueError):
            continue
    return out


def precisions(path: str | Path) -> dict[tuple[str, str], int]:
    """{(dtype, device): chunks} over the store's markers (markers from before precisions were
    recorded count for nothing)."""
    found: dict[tuple[str, str], int] = {}
    for info in _markers(path):
        if "dtype" in info:
            key = (info["dtype"], info.get("device", "?"))
            found[key] = found.get(key, 0) + 1
    return found


def chunk_versions(path: str | Path) -> list[dict[str, str]]:
    """The distinct software versions the store's chunks were written with (provenance)."""
    found: list[dict[str, str]] = []
    for info in _markers(path):
        if "versions" in info and info["versions"] not in found:
            found.append(info["versions"])
    return found


def check_precision(path: str | Path, precision: dict[str, str]) -> None:
    """Refuse to add chunks computed in another dtype or on another device to a store: `dtype:
    auto` is fp16 on a GPU and fp32 on a CPU, so a part on another kind of node would mix them."""
    mine = (precision["dtype"], precision["device"])
    other = {k: n for k, n in precisions(path).items() if k != mine}
    if other:
        (dtype, device), count = next(iter(other.items()))
        raise PrecisionMismatch(
            f"{path}: {count} of its chunks were computed in {dtype} on {device}, this part would compute "
            f"{mine[0]} on {mine[1]}; one store never mixes them. Run its parts on one kind of node, or set the "
            "model's dtype (and probe.device) explicitly; a changed setting extracts the store again")


def chunk_layers(path: str | Path, split: str, chunk: int) -> list[str]:
    """Layers (and 'labels') a chunk holds on disk, per its marker."""
    info = read_marker(path, split, chunk)
    return [] if info is None else list(info.get("layers", []))


def missing_work(path: str | Path, chunks: list[tuple[str, int]],
                 keys: list[str]) -> list[tuple[str, int, list[str]]]:
    """(split, chunk, missing layers) for chunks that lack any of `keys` or their labels."""
    work = []
    for split, chunk in chunks:
        done = set(chunk_layers(path, split, chunk))
        missing = [k for k in [LABELS, *keys] if k not in done]
        if missing:
            work.append((split, chunk, missing))
    return work
