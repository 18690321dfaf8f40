"""Feature stores: one Zarr group per (model, prompt), one fp16 array per layer (docs/DESIGN.md).

A store's life, one writer per step, so parallel jobs never race on metadata:

- `prepare` (one small job, before any part) is the only step that creates, extends or deletes.
  It discards the store when its fingerprint (what shapes every layer: model, prompt, data,
  chunking) changed; creates a new store under a temporary name and renames it into place, so a
  store either has all its metadata or does not exist; and adds arrays for newly requested
  layers, listing them in the group attrs only once they exist. Arrays of layers no longer
  requested stay (removing a layer deletes nothing).
- The parts (`extract.extract_part`) only write chunks of arrays that exist: each part a disjoint,
  chunk-aligned range, and after each chunk a marker naming the layers that chunk now holds.
- `finalize` checks that every chunk holds every requested layer, records the complete layers in
  the group attrs and writes the manifest, the rule's output, last.

Markers: `.progress/{split}/{chunk:06d}.json` = {"layers": [...], "prompts": [...]}, rewritten
atomically by the one part that owns the chunk after its arrays are on disk. A killed job redoes
exactly the (chunk, layer) pairs no marker lists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..fingerprint import Fingerprint
from ..models.layers import sort_keys
from ..models.prompts import DOMINANT, SEEDED_FILLS
from .chunkfiles import ChunkPaths
from .markers import LABELS, PrecisionMismatch, chunk_versions, precisions, read_marker, sweep_orphans, temporary_files

SPLITS = ("training", "validation")
FILL_ATTRS = ("category_fill", "category_seed")  # a control store's fill, in its attrs and manifest
log = logging.getLogger("layerprobe.store")


class StoreNotPrepared(RuntimeError):
    """A part found a store whose fingerprint or arrays differ from what it was asked to write."""


@dataclass
class Layout:
    """The geometry and identity of a store, from the config and the data store."""

    model: str
    prompt_id: str
    prompt_text: str | None
    dims: dict[str, int]  # every key the model can extract -> width
    tokens: int
    grid: int
    label_size: int
    has_cls: bool
    chunk_images: int
    orders: dict[str, list[int]]  # split -> data-store indices in store order
    image_ids: dict[str, list[str]]  # split -> ids in store order
    fingerprint: Fingerprint  # fingerprint.store(): a change discards the whole store
    geometry: str = "center_crop"  # the data store's (layerprobe.data.geometry); labels are in it
    data_store: str | None = None  # pad: where whole-image scoring finds the original annotations
    category_fill: str | None = None  # how `{category}` is filled (None: the prompt has none)
    category_seed: int = 0  # seeds the shuffled and random fills

    def fill_attrs(self) -> dict[str, Any]:
        """What a control store was conditioned on, for its attrs and manifest. Empty for the
        oracle (`dominant`) and prompt-free stores: their bytes stay as before fills had a choice."""
        if self.category_fill in (None, DOMINANT):
            return {}
        seeded = self.category_fill in SEEDED_FILLS
        return {"category_fill": self.category_fill, **({"category_seed": self.category_seed} if seeded else {})}

    def count(self, split: str) -> int:
        return len(self.orders[split])

    def chunks(self, split: str) -> int:
        return -(-self.count(split) // self.chunk_images)

    def all_chunks(self) -> list[tuple[str, int]]:
        return [(s, c) for s in SPLITS for c in range(self.chunks(s))]

    def rows(self, chunk: int, split: str) -> tuple[int, int]:
        start = chunk * self.chunk_images
        return start, min(start + self.chunk_images, self.count(split))

    def layer_bytes(self, key: str, split: str) -> int:
        per_image = self.tokens * self.dims[key] * 2 + (self.dims[key] * 2 if self.has_cls else 0)
        return self.count(split) * per_image

    def bytes_per_split(self, split: str, keys: list[str]) -> int:
        return sum(self.layer_bytes(k, split) for k in keys) + self.count(split) * self.label_size ** 2

    def layer_fingerprint(self, key: str) -> Fingerprint:
        return self.fingerprint | {"layer": key}


def shuffled_order(n: int, seed: int, split: str) -> list[int]:
    """Seeded image order written to stores, so chunk-level shuffling is nearly a full shuffle."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return rng.permutation(n).tolist()


def part_chunks(layout: Layout, part: int, parts: int) -> list[tuple[str, int]]:
    """Contiguous, chunk-aligned, disjoint ranges: part p of `parts` (0-based)."""
    chunks = layout.all_chunks()
    bounds = np.linspace(0, len(chunks), parts + 1).round().astype(int)
    return chunks[bounds[part]:bounds[part + 1]]


# --------------------------------------------------------------------------------------------
# prepare: the one step that creates, extends or discards
# --------------------------------------------------------------------------------------------

def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """The group attrs from `zarr.json`, or None when absent or unreadable. Plain JSON: cheap
    enough for DAG build."""
    try:
        return json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None


def prepare(path: str | Path, layout: Layout, keys: list[str]) -> dict[str, Any]:
    """Make the store at `path` hold arrays for `keys` under `layout`'s fingerprint.

    Returns what was done: {"discarded": [reasons] | None, "created": bool, "added": [keys],
    "layers": [every key with an array]}.
    """
    path = Path(path)
    _remove_leftovers(path)
    if path.is_dir():
        sweep_orphans(path)
    attrs = read_attrs(path)
    discarded = None
    if path.exists() and not layout.fingerprint.matches((attrs or {}).get("fingerprint")):
        discarded = layout.fingerprint.differences((attrs or {}).get("fingerprint"))
        log.info("discarding %s, made with another config: %s", path, "; ".join(discarded))
        _discard(path)
    created = not path.exists()
    if created:
        _create(path, layout)
    group = zarr.open_group(path, mode="r+")
    existing = list(group.attrs["layers"])
    added = [k for k in sort_keys(list(keys)) if k not in existing]
    for key in added:
        _create_layer(group, layout, key)
    if added:  # listed only once every array of the layer exists
        group.attrs["layers"] = sort_keys(existing + added)
    layers = list(group.attrs["layers"])
    log.info("store %s: %s; layers %s%s", path, "created" if created else "kept",
             layers, f" (added {added})" if added else "")
    return {"discarded": discarded, "created": created, "added": added, "layers": layers,
            "fingerprint": layout.fingerprint.hash}


def _siblings(path: Path, tag: str) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.{tag}-*")) if path.parent.is_dir() else []


def _remove_leftovers(path: Path) -> None:
    """Temporary and discarded copies left by a prepare that was killed."""
    for leftover in _siblings(path, "tmp") + _siblings(path, "discard"):
        log.info("removing %s (left by an interrupted prepare)", leftover)
        shutil.rmtree(leftover)


def _discard(path: Path) -> None:
    # Rename first (atomic): a kill during the slow delete leaves a leftover, never a half store.
    trash = path.with_name(f"{path.name}.discard-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def _create(path: Path, layout: Layout) -> None:
    """Group metadata and label arrays under a temporary name, then renamed into place."""
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    group = zarr.open_group(tmp, mode="w")
    c, s = layout.chunk_images, layout.label_size
    for split in SPLITS:
        make_chunk_dirs(group.create_array(f"{split}/{LABELS}", shape=(layout.count(split), s, s), dtype="uint8",
                                            chunks=(c, s, s), compressors=None, fill_value=255))
    group.attrs.update({"model": layout.model, "prompt_id": layout.prompt_id, "prompt_text": layout.prompt_text,
                        "layers": [], "complete_layers": [], "dims": {}, "grid": layout.grid,
                        "tokens": layout.tokens, "has_cls": layout.has_cls, "chunk_images": c,
                        "fingerprint": layout.fingerprint.record(), **layout.fill_attrs(),
                        **{f"{s}_image_ids": layout.image_ids[s] for s in SPLITS},
                        **{f"{s}_order": layout.orders[s] for s in SPLITS}})
    if layout.geometry != "center_crop":  # centre-crop stores keep the attrs they always had
        group.attrs.update({"geometry": layout.geometry, "data_store": layout.data_store})
    path.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, path)


def _create_layer(group: zarr.Group, layout: Layout, key: str) -> None:
    """Arrays of one layer (and its CLS tokens); overwrite=True clears a leftover of a killed prepare,
    which no marker can reference because the layer was never listed."""
    c, d, t = layout.chunk_images, layout.dims[key], layout.tokens
    attrs = {"model": layout.model, "prompt_id": layout.prompt_id, "layer": key, "grid": layout.grid,
             "fingerprint": layout.layer_fingerprint(key).hash}
    for split in SPLITS:
        n = layout.count(split)
        # Uncompressed: chunks are raw bytes, read at disk speed by the loader.
        array = group.create_array(f"{split}/{key}", shape=(n, t, d), dtype="float16", chunks=(c, t, d),
                                   compressors=None, fill_value=0, overwrite=True)
        array.attrs.update(attrs)
        make_chunk_dirs(array)
        if layout.has_cls:
            cls = group.create_array(f"{split}/{key}_cls", shape=(n, d), dtype="float16", chunks=(c, d),
                                     compressors=None, fill_value=0, overwrite=True)
            cls.attrs.update({**attrs, "token": "cls"})
            make_chunk_dirs(cls)
    dims = {**group.attrs["dims"], key: d}
    group.attrs["dims"] = {k: dims[k] for k in sort_keys(list(dims))}  # same bytes however it grew


def make_chunk_dirs(array: Any) -> None:
    """The directory of every chunk file (`c/{chunk}/0/`), made here once rather than by the
    parts: with them made here, write_path.py measured the host write path at ViT-B/16 sizes at
    0.54-0.56 of the write floor, against 0.45-0.49 when each part made them (noisy disk)."""
    paths = ChunkPaths(array)
    if not paths.raw:
        return
    for chunk in range(-(-array.shape[0] // array.chunks[0])):
        paths(chunk).parent.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# parts: only chunks and their markers
# --------------------------------------------------------------------------------------------

def open_for_parts(path: str | Path, layout: Layout, keys: list[str]) -> zarr.Group:
    """The prepared store, checked: a part never creates, extends or deletes anything."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None:
        raise StoreNotPrepared(f"{path}: no store here; the prepare_store job creates it before the parts run")
    if not layout.fingerprint.matches(attrs.get("fingerprint")):
        raise StoreNotPrepared(f"{path}: prepared for another config "
                               f"({'; '.join(layout.fingerprint.differences(attrs.get('fingerprint')))}); "
                               "the prepare_store job must run first")
    missing = [k for k in keys if k not in attrs.get("layers", [])]
    if missing:
        raise StoreNotPrepared(f"{path}: has no arrays for {missing}; the prepare_store job adds them")
    return zarr.open_group(path, mode="r+")


# --------------------------------------------------------------------------------------------
# finalize and reading
# --------------------------------------------------------------------------------------------

def finalize(path: str | Path, manifest_path: str | Path, keys: list[str]) -> dict[str, Any]:
    """Verify every chunk holds every layer in `keys`, record them, write the manifest last."""
    path = Path(path)
    sweep_orphans(path)  # every part has finished: what is left is a killed writer's
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    chunk = attrs["chunk_images"]
    listed = list(attrs["layers"])
    missing, filled = [], {}
    held: dict[str, int] = {k: 0 for k in listed}
    total = 0
    for split in SPLITS:
        texts: list[str] = []
        for c in range(-(-len(attrs[f"{split}_image_ids"]) // chunk)):
            total += 1
            info = read_marker(path, split, c) or {}
            done = set(info.get("layers", []))
            lacking = [k for k in [LABELS, *keys] if k not in done]
            if lacking:
                missing.append(f"{split}/{c}: {lacking}")
                continue
            for k in done & set(held):
                held[k] += 1
            texts += info.get("prompts", [])
        filled[split] = texts
    if missing:
        raise RuntimeError(f"{path}: incomplete store, chunks not written: {missing[:10]}"
                           f"{' …' if len(missing) > 10 else ''} ({len(missing)} missing); rerun extraction")
    complete = sort_keys([k for k in listed if held[k] == total])
    made_with = precisions(path)
    if len(made_with) > 1:  # two parts started at once on different kinds of node
        raise PrecisionMismatch(f"{path}: chunks computed with different precisions {sorted(made_with)} "
                                "(dtype, device); delete the store and extract it on one kind of node")
    precision = [{"dtype": d, "device": dev} for d, dev in made_with][:1]
    software = chunk_versions(path)  # one entry, unless parts ran with different software
    group.attrs["complete_layers"] = complete
    if attrs.get("prompt_text") is not None:
        group.attrs["filled_prompts"] = filled
    if precision:
        group.attrs["precision"] = precision[0]
    if software:
        group.attrs["versions"] = software[0] if len(software) == 1 else software
    layer_fps = {k: group[f"training/{k}"].attrs["fingerprint"] for k in complete}
    manifest = {"store": str(path), "fingerprint": attrs["fingerprint"], "model": attrs["model"],
                "prompt_id": attrs["prompt_id"], **{k: attrs[k] for k in FILL_ATTRS if k in attrs},
                **({"precision": precision[0]} if precision else {}),
                **({"versions": software[0] if len(software) == 1 else software} if software else {}),
                "layers": complete, "layer_fingerprints": layer_fps,
                "bytes": disk_bytes(path), "images": {s: len(attrs[f"{s}_image_ids"]) for s in SPLITS}}
    tmp = Path(f"{manifest_path}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return manifest


def keys_after_run(path: str | Path, fingerprint: Fingerprint, requested: list[str]) -> list[str]:
    """The layers a store holds once its jobs have run: those requested plus those already
    complete in it (under the same fingerprint). The store jobs' params: adding a layer changes
    it (one extension runs); removing one does not (nothing is deleted, nothing reruns)."""
    attrs = read_attrs(path) or {}
    complete = attrs.get("complete_layers", []) if fingerprint.matches(attrs.get("fingerprint")) else []
    return sort_keys(list(dict.fromkeys([*requested, *complete])))


def disk_bytes(path: str | Path) -> int:
    """The store's bytes on disk, writers' temporary files not counted."""
    temporary = set(temporary_files(Path(path)))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f not in temporary)


def open_store(path: str | Path) -> zarr.Group:
    return zarr.open_group(path, mode="r")


def check_layer(group: zarr.Group, key: str, expected: Fingerprint, where: str) -> None:
    """A probe's guard: the layer exists, is complete and was made under the expected fingerprint."""
    from ..fingerprint import StaleResultError

    if key not in group.attrs.get("complete_layers", []):
        raise RuntimeError(f"{where}: layer {key} is not complete in this store "
                           f"(complete: {group.attrs.get('complete_layers', [])}); rerun extraction")
    recorded = group[f"training/{key}"].attrs.get("fingerprint")
    if recorded != expected.hash:
        made = group.attrs.get("fingerprint") or {}
        layer = {"inputs": {**made.get("inputs", {}), "layer": key}} if made else None
        raise StaleResultError(f"{where}/{key}: features made with another config (layer fingerprint {recorded}, "
                               f"the config gives {expected.hash}); differing: "
                               f"{'; '.join(expected.differences(layer))}")
