"""Feature stores: one Zarr group per (model, prompt), one fp16 array per layer (docs/DESIGN.md).

Completion is tracked per chunk: `.progress/{split}/{chunk}.json` is written only after every
array of that chunk is on disk, so a killed job resumes by redoing only unmarked chunks, and a
store is finalized (manifest written) only when every chunk of every split is marked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

SPLITS = ("training", "validation")


@dataclass
class Layout:
    """Everything that fixes the bytes of a store; its hash guards against stale partial stores."""

    model: str
    prompt_id: str
    prompt_text: str | None
    keys: list[str]
    dims: dict[str, int]
    tokens: int
    grid: int
    label_size: int
    has_cls: bool
    chunk_images: int
    orders: dict[str, list[int]]  # split -> data-store indices in store order
    image_ids: dict[str, list[str]]  # split -> ids in store order
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def count(self, split: str) -> int:
        return len(self.orders[split])

    def chunks(self, split: str) -> int:
        return -(-self.count(split) // self.chunk_images)

    def all_chunks(self) -> list[tuple[str, int]]:
        return [(s, c) for s in SPLITS for c in range(self.chunks(s))]

    def rows(self, chunk: int, split: str) -> tuple[int, int]:
        start = chunk * self.chunk_images
        return start, min(start + self.chunk_images, self.count(split))

    def bytes_per_split(self, split: str) -> int:
        per_image = sum(self.tokens * d * 2 for d in self.dims.values())
        per_image += sum(d * 2 for d in self.dims.values()) if self.has_cls else 0
        return self.count(split) * (per_image + self.label_size ** 2)


def shuffled_order(n: int, seed: int, split: str) -> list[int]:
    """Seeded image order written to stores, so chunk-level shuffling is nearly a full shuffle."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return rng.permutation(n).tolist()


def part_chunks(layout: Layout, part: int, parts: int) -> list[tuple[str, int]]:
    """Contiguous, chunk-aligned, disjoint ranges: part p of `parts` (0-based)."""
    chunks = layout.all_chunks()
    bounds = np.linspace(0, len(chunks), parts + 1).round().astype(int)
    return chunks[bounds[part]:bounds[part + 1]]


def open_for_writing(path: str | Path, layout: Layout) -> zarr.Group:
    """Open the store, creating arrays if absent; a store from another layout is discarded."""
    path = Path(path)
    fingerprint = layout.fingerprint()
    if path.exists():
        try:
            existing = zarr.open_group(path, mode="r").attrs.get("fingerprint")
        except Exception:  # unreadable metadata: a store killed while being created
            existing = None
        if existing == fingerprint:
            return zarr.open_group(path, mode="r+")
        shutil.rmtree(path)
    return _create(path, layout, fingerprint)


def _create(path: Path, layout: Layout, fingerprint: str) -> zarr.Group:
    # Parallel parts may race here; they write identical metadata, so the race is harmless.
    group = zarr.open_group(path, mode="a")
    for split in SPLITS:
        n, c = layout.count(split), layout.chunk_images
        for key in layout.keys:
            # Uncompressed: chunks are raw bytes, read at disk speed by the loader.
            group.require_array(f"{split}/{key}", shape=(n, layout.tokens, layout.dims[key]), dtype="float16",
                                chunks=(c, layout.tokens, layout.dims[key]), compressors=None, fill_value=0)
            if layout.has_cls:
                group.require_array(f"{split}/{key}_cls", shape=(n, layout.dims[key]), dtype="float16",
                                    chunks=(c, layout.dims[key]), compressors=None, fill_value=0)
        s = layout.label_size
        group.require_array(f"{split}/labels", shape=(n, s, s), dtype="uint8", chunks=(c, s, s),
                            compressors=None, fill_value=255)
    attrs = {"model": layout.model, "prompt_id": layout.prompt_id, "prompt_text": layout.prompt_text,
             "layers": layout.keys, "dims": layout.dims, "grid": layout.grid, "tokens": layout.tokens,
             "has_cls": layout.has_cls, "chunk_images": layout.chunk_images, "fingerprint": fingerprint,
             **{f"{s}_image_ids": layout.image_ids[s] for s in SPLITS},
             **{f"{s}_order": layout.orders[s] for s in SPLITS}, **layout.extra}
    group.attrs.update(attrs)
    return group


def marker(path: str | Path, split: str, chunk: int) -> Path:
    return Path(path) / ".progress" / split / f"{chunk:06d}.json"


def mark_done(path: str | Path, split: str, chunk: int, info: dict[str, Any]) -> None:
    """Atomic: write a temp file then rename, so a marker is never half-written."""
    target = marker(path, split, chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, target)


def is_done(path: str | Path, split: str, chunk: int) -> bool:
    return marker(path, split, chunk).is_file()


def missing_chunks(path: str | Path, layout: Layout) -> list[tuple[str, int]]:
    return [(s, c) for s, c in layout.all_chunks() if not is_done(path, s, c)]


def finalize(path: str | Path, manifest_path: str | Path) -> dict[str, Any]:
    """Verify every chunk is marked, record per-image prompts, write the manifest last."""
    path = Path(path)
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    chunk = attrs["chunk_images"]
    missing, filled = [], {}
    for split in SPLITS:
        n = len(attrs[f"{split}_image_ids"])
        texts: list[str] = []
        for c in range(-(-n // chunk)):
            if not is_done(path, split, c):
                missing.append(f"{split}/{c}")
                continue
            texts += json.loads(marker(path, split, c).read_text()).get("prompts", [])
        filled[split] = texts
    if missing:
        raise RuntimeError(f"{path}: incomplete store, chunks not written: {missing[:10]}"
                           f"{' …' if len(missing) > 10 else ''} ({len(missing)} missing); rerun extraction")
    if attrs.get("prompt_text") is not None:
        group.attrs["filled_prompts"] = filled
    manifest = {"store": str(path), "fingerprint": attrs["fingerprint"], "model": attrs["model"],
                "prompt_id": attrs["prompt_id"], "layers": attrs["layers"], "bytes": disk_bytes(path),
                "images": {s: len(attrs[f"{s}_image_ids"]) for s in SPLITS}}
    tmp = Path(str(manifest_path) + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return manifest


def disk_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def open_store(path: str | Path) -> zarr.Group:
    return zarr.open_group(path, mode="r")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"
