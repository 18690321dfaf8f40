"""Extraction: one forward per batch for every layer a chunk lacks, written chunk by chunk.

The model's forward never waits on disk: finished chunks go through a bounded queue to a
writer thread, which writes every array of the chunk and then its completion marker.
Parts only write chunks; `store.prepare` has created every array before they start.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import prompt_text, store_fill
from ..data.ade20k import CLASS_NAMES
from ..fingerprint import Fingerprint
from ..formatting import human_bytes
from ..models.backbones.base import Backbone
from ..models.prompts import PromptFiller, prompt_filler
from ..models.specs import model_spec
from ..progress import progress
from ..provenance import versions
from . import markers, store
from .chunkfiles import ChunkPaths

log = logging.getLogger("layerprobe.extract")


def make_layout(name: str, model: dict[str, Any], prompt_id: str, data: Any, chunk_images: int, seed: int,
                fingerprint: Fingerprint, cache_dir: str | None = None) -> store.Layout:
    """A store's geometry from the model spec and the data store; `fingerprint` = fingerprint.store().
    `prompt_id` is the store id (`config.prompt_ids`): it names the prompt and its category fill;
    `cache_dir` (weights.cache_dir) holds a fetched hub model's config.json."""
    spec = model_spec(name, model, cache_dir)
    orders, ids = {}, {}
    for split in store.SPLITS:
        all_ids = data.attrs[f"{split}_image_ids"]
        orders[split] = store.shuffled_order(len(all_ids), seed, split)
        ids[split] = [all_ids[i] for i in orders[split]]
    return store.Layout(model=name, prompt_id=prompt_id, prompt_text=prompt_text(model, prompt_id),
                        dims=spec.dims(), tokens=spec.tokens, grid=spec.grid, label_size=spec.image_size,
                        has_cls=spec.has_cls, chunk_images=chunk_images, orders=orders, image_ids=ids,
                        fingerprint=fingerprint, geometry=data.attrs.get("geometry", "center_crop"),
                        data_store=_location(data), category_fill=store_fill(model, prompt_id),
                        category_seed=model.get("category_seed", 0))


def layout_for(config: dict[str, Any], name: str, prompt_id: str, data: Any, fingerprint: Fingerprint) -> store.Layout:
    """`make_layout` with the store settings of a validated config (the workflow's jobs)."""
    return make_layout(name, config["models"][name], prompt_id, data, config["store"]["chunk_images"],
                       config["store"]["shuffle_seed"], fingerprint, cache_dir=config["weights"]["cache_dir"])


def _location(data: Any) -> str | None:
    """The data store's path as it was opened (relative to the workdir in the workflow)."""
    root = getattr(data.store, "root", None)
    return None if root is None else str(root)


class ChunkWriter:
    """Writes chunks on a background thread; errors (e.g. disk full) surface in the caller.

    A chunk of an uncompressed array is written as its file's raw bytes (`RawChunks`: one write
    call per array and chunk, the bytes zarr itself would write), its arrays `write_threads` at a
    time (page-cache writes are CPU work: one thread wrote 0.65x as fast as the path's floor at
    ViT-B/16 sizes, where 17 files per chunk go to 17 directories); other arrays go through zarr,
    with the array handles opened once. The marker follows the chunk's last array.
    """

    def __init__(self, group: Any, store_path: Path, depth: int = 2, write_threads: int = 2) -> None:
        self.group, self.store_path = group, store_path
        self.writers = (ThreadPoolExecutor(write_threads, thread_name_prefix="extract-write") if write_threads > 1
                        else None)
        self.arrays: dict[str, Any] = {}
        self.raw: dict[str, RawChunks | None] = {}
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.wait_seconds = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, item: tuple) -> None:
        self._raise()
        start = time.perf_counter()
        self.queue.put(item)
        self.wait_seconds += time.perf_counter() - start

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.writers is not None:
            self.writers.shutdown()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.store_path}: writing failed: {self.error}") from self.error

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain so the producer never blocks forever
            try:
                self._write(*item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the producer
                self.error = err

    def _write(self, split: str, chunk: int, start: int, arrays: dict[str, np.ndarray | list[np.ndarray]],
               info: dict) -> None:
        """`arrays`: per array, the chunk's rows whole or as consecutive parts."""
        first = next(iter(arrays.values()))
        stop = start + (sum(len(p) for p in first) if isinstance(first, list) else len(first))
        raw_writes = []
        for name, values in arrays.items():
            key = f"{split}/{name}"
            if key not in self.arrays:
                self.arrays[key] = self.group[key]
                self.raw[key] = RawChunks.of(self.arrays[key])
            raw = self.raw[key]
            if raw is not None and start % raw.chunk_rows == 0:
                raw_writes.append((raw, start // raw.chunk_rows, values))
            else:
                self.arrays[key][start:stop] = np.concatenate(values) if isinstance(values, list) else values
        if self.writers is None or len(raw_writes) < 2:
            for raw, index, values in raw_writes:
                raw.write(index, values)
        else:  # list(): waits for all and raises the first error
            list(self.writers.map(lambda job: job[0].write(job[1], job[2]), raw_writes))
        markers.write_marker(self.store_path, split, chunk, info)  # only after the chunk is on disk


class RawChunks:
    """Whole chunks of an uncompressed array written as the raw little-endian bytes of their file,
    as zarr does (`bytes` codec, no compressor): padded to the full chunk shape with the fill
    value, written to a temporary file and renamed into place."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.chunk_rows = int(arr.chunks[0])
        self.path = ChunkPaths(arr)

    @classmethod
    def of(cls, arr: Any) -> "RawChunks | None":
        raw = cls(arr)
        return raw if raw.path.raw and tuple(arr.chunks[1:]) == tuple(arr.shape[1:]) else None

    def write(self, chunk: int, values: np.ndarray | list[np.ndarray]) -> None:
        """The chunk's rows, given whole or as consecutive parts (a chunk's forward batches):
        parts are written with one gathered write, never concatenated in memory."""
        parts = list(values) if isinstance(values, list) else [values]
        rows = sum(len(p) for p in parts)
        if rows < self.chunk_rows:  # the edge chunk: stored full size, the rest fill value
            parts.append(np.full((self.chunk_rows - rows, *self.arr.shape[1:]), self.arr.fill_value,
                                 dtype=self.arr.dtype))
        little = self.arr.dtype.newbyteorder("<")
        views = [memoryview(np.ascontiguousarray(p, dtype=little).reshape(-1).view(np.uint8)) for p in parts]
        path = self.path(chunk)
        markers.remove_orphans(path)  # a killed writer's: this part owns the chunk, no live writer can
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{markers.PARTIAL}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # a store prepared before store.make_chunk_dirs existed
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                while views:  # writev may write less than asked
                    written = os.writev(fd, views)
                    while views and written >= len(views[0]):
                        written -= len(views[0])
                        views.pop(0)
                    if views and written:
                        views[0] = views[0][written:]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:  # disk full, a signal: no partial file left behind (SIGKILL: the next write's sweep)
            tmp.unlink(missing_ok=True)
            raise


def extract_part(backbone: Backbone | Callable[[], Backbone], data: Any, store_path: str | Path,
                 layout: store.Layout, keys: list[str], part: int, parts: int, batch_size: int,
                 precision: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the (chunk, layer) pairs of one part that no marker lists yet; returns counts and timings.

    The store must be prepared (`store.prepare`) for `keys`: a part only writes chunks. Each
    forward stops after the deepest layer its chunk still lacks, so extending a store with a
    shallow layer costs a shallow forward. `backbone` may be a callable that loads it: a part
    with nothing to do never loads the model. `precision` ({"dtype", "device"} of the forward,
    `backbones.compute_precision`) goes into every marker; a part refuses a store whose chunks
    were computed with another one.
    """
    store_path = Path(store_path)
    group = store.open_for_parts(store_path, layout, keys)
    mine = store.part_chunks(layout, part, parts)
    todo = markers.missing_work(store_path, mine, keys)
    pairs = sum(len([k for k in missing if k != store.LABELS]) for _, _, missing in todo)
    lacking = sorted({k for _, _, missing in todo for k in missing if k != store.LABELS})
    new_bytes = sum(layout.layer_bytes(k, s) // layout.count(s) * (layout.rows(c, s)[1] - layout.rows(c, s)[0])
                    for s, c, missing in todo for k in missing if k != store.LABELS)
    log.info("store %s: %d layers x %s images x %d tokens; part %d/%d: %d of %d chunks to do, "
             "%d (chunk, layer) pairs missing %s, %s to write", store_path, len(keys),
             {s: layout.count(s) for s in store.SPLITS}, layout.tokens, part + 1, parts, len(todo), len(mine),
             pairs, lacking, human_bytes(new_bytes))
    stats = {"chunks": len(todo), "pairs": pairs, "layers": lacking, "forward_seconds": 0.0,
             "writer_wait_seconds": 0.0}
    if not todo:
        return stats
    if precision is not None:
        markers.check_precision(store_path, precision)
    if not isinstance(backbone, Backbone):
        backbone = backbone()
    writer = ChunkWriter(group, store_path)
    fill_prompts = store_prompt_filler(layout, data)
    # A reader thread decodes the next chunk's images while the model runs on this one.
    reader = ThreadPoolExecutor(1, thread_name_prefix="extract-read")
    inputs = [reader.submit(_gather, data, s_, layout.orders[s_][slice(*layout.rows(c, s_))]) for s_, c, _ in todo[:1]]
    try:
        for i, (split, chunk, missing) in enumerate(progress(todo, desc=f"extract {layout.model}/{layout.prompt_id} "
                                                             f"part {part + 1}/{parts}", unit="chunk")):
            start, stop = layout.rows(chunk, split)
            if i + 1 < len(todo):
                s_, c, _ = todo[i + 1]
                inputs.append(reader.submit(_gather, data, s_, layout.orders[s_][slice(*layout.rows(c, s_))]))
            images, labels, boxes = inputs[i].result()
            inputs[i] = None
            prompts = fill_prompts(split, labels, layout.orders[split][start:stop]) if fill_prompts else None
            wanted = [k for k in missing if k != store.LABELS]
            t0 = time.perf_counter()
            arrays = _forward_chunk(backbone, images, prompts, wanted, batch_size, boxes) if wanted else {}
            stats["forward_seconds"] += time.perf_counter() - t0
            if store.LABELS in missing:
                arrays[store.LABELS] = labels
            done = markers.chunk_layers(store_path, split, chunk)
            writer.put((split, chunk, start, arrays, {"layers": sorted(set(done) | set(missing)),
                                                      "prompts": prompts or [], **(precision or {}),
                                                      "versions": versions()}))
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.close()
    stats["writer_wait_seconds"] = writer.wait_seconds
    return stats


def build_store(backbone: Backbone, data: Any, store_path: str | Path, manifest_path: str | Path,
                layout: store.Layout, keys: list[str], batch_size: int, parts: int = 1) -> dict[str, Any]:
    """prepare, every part in turn, finalize: a whole store in one process (tests, benchmarks)."""
    store.prepare(store_path, layout, keys)
    for part in range(parts):
        extract_part(backbone, data, store_path, layout, keys, part, parts, batch_size)
    return store.finalize(store_path, manifest_path, keys)


def store_prompt_filler(layout: store.Layout, data: Any) -> PromptFiller | None:
    """The store's prompt per image, (split, labels, data-store rows) -> texts, filled as the scan
    fills them; None for a prompt-free model."""
    if layout.prompt_text is None:
        return None
    names = data.attrs.get("class_names", list(CLASS_NAMES))
    return prompt_filler(layout.prompt_text, layout.category_fill, names, layout.category_seed, data)


def _gather(data: Any, split: str, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images, labels and (pad geometry) content boxes of data-store rows, in the given order."""
    idx = np.asarray(rows)
    sorted_idx = np.sort(idx)
    inverse = np.searchsorted(sorted_idx, idx)
    images = data[f"{split}/images"].get_orthogonal_selection((sorted_idx,))[inverse]
    labels = data[f"{split}/labels"].get_orthogonal_selection((sorted_idx,))[inverse]
    boxes = np.asarray(data[f"{split}/boxes"][:])[idx] if f"{split}/boxes" in data else None
    return images, labels, boxes


def _forward_chunk(backbone: Backbone, images: np.ndarray, prompts: list[str] | None, keys: list[str],
                   batch_size: int, boxes: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """Per key, the chunk's features as its forward batches' float16 arrays (no copy: the writer
    writes the parts with one gathered write)."""
    parts: dict[str, list[np.ndarray]] = {}
    for b in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[b:b + batch_size])
        # Only pad stores have boxes; a centre-crop forward is called exactly as before.
        padding = {} if boxes is None else {"boxes": torch.from_numpy(boxes[b:b + batch_size])}
        # float16 cast on the model's device: half the bytes cross to the host, none converted here.
        tokens, cls = backbone.extract(batch, prompts[b:b + batch_size] if prompts else None, keys,
                                       dtype=torch.float16, **padding)
        for key in keys:
            parts.setdefault(key, []).append(tokens[key].numpy())
            if key in cls:
                parts.setdefault(f"{key}_cls", []).append(cls[key].numpy())
    return parts
