"""Extraction: one forward per batch for every requested layer, written chunk by chunk.

The model's forward never waits on disk: finished chunks go through a bounded queue to a
writer thread, which writes every array of the chunk and then its completion marker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import store
from .ade20k import CLASS_NAMES
from .backbones.base import Backbone
from .config import prompt_text
from .progress import progress
from .specs import model_spec, requested_keys

log = logging.getLogger("layerprobe.extract")


def make_layout(name: str, model: dict[str, Any], prompt_id: str, data: Any, chunk_images: int,
                seed: int) -> store.Layout:
    spec = model_spec(name, model)
    keys = requested_keys(model)
    orders, ids = {}, {}
    for split in store.SPLITS:
        all_ids = data.attrs[f"{split}_image_ids"]
        orders[split] = store.shuffled_order(len(all_ids), seed, split)
        ids[split] = [all_ids[i] for i in orders[split]]
    dims = {k: spec.dims()[k] for k in keys}
    return store.Layout(model=name, prompt_id=prompt_id, prompt_text=prompt_text(model, prompt_id), keys=keys,
                        dims=dims, tokens=spec.tokens, grid=spec.grid, label_size=spec.image_size,
                        has_cls=spec.has_cls, chunk_images=chunk_images, orders=orders, image_ids=ids,
                        extra={"model_config": {k: v for k, v in model.items() if k != "prompts"}})


class ChunkWriter:
    """Writes chunks on a background thread; errors (e.g. disk full) surface in the caller."""

    def __init__(self, group: Any, store_path: Path, depth: int = 2) -> None:
        self.group, self.store_path = group, store_path
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

    def _write(self, split: str, chunk: int, start: int, arrays: dict[str, np.ndarray], info: dict) -> None:
        stop = start + len(arrays["labels"])
        for name, values in arrays.items():
            self.group[f"{split}/{name}"][start:stop] = values
        store.mark_done(self.store_path, split, chunk, info)


def run_part(name: str, model: dict[str, Any], prompt_id: str, backbone: Backbone, data: Any,
             store_path: str | Path, part: int, parts: int, chunk_images: int, seed: int) -> dict[str, Any]:
    """Extract the chunks of one part that are not yet marked done; returns timing stats."""
    store_path = Path(store_path)
    layout = make_layout(name, model, prompt_id, data, chunk_images, seed)
    group = store.open_for_writing(store_path, layout)
    todo = [c for c in store.part_chunks(layout, part, parts) if not store.is_done(store_path, *c)]
    total = sum(layout.bytes_per_split(s) for s in store.SPLITS)
    log.info("store %s: %d layers x %s images x %d tokens -> %s on disk; part %d/%d: %d chunks to do",
             store_path, len(layout.keys), {s: layout.count(s) for s in store.SPLITS}, layout.tokens,
             store.human_bytes(total), part + 1, parts, len(todo))
    writer = ChunkWriter(group, store_path)
    text = layout.prompt_text
    names = data.attrs.get("class_names", list(CLASS_NAMES))
    forward_seconds = 0.0
    try:
        for split, chunk in progress(todo, desc=f"extract {name}/{prompt_id} part {part + 1}/{parts}", unit="chunk"):
            start, stop = layout.rows(chunk, split)
            rows = layout.orders[split][start:stop]
            images, labels = _gather(data, split, rows)
            prompts = _fill_prompts(text, labels, names)
            t0 = time.perf_counter()
            arrays = _forward_chunk(backbone, images, prompts, layout.keys, model["batch_size"])
            forward_seconds += time.perf_counter() - t0
            arrays["labels"] = labels
            writer.put((split, chunk, start, arrays, {"prompts": prompts or []}))
    finally:
        writer.close()
    return {"chunks": len(todo), "forward_seconds": forward_seconds, "writer_wait_seconds": writer.wait_seconds}


def _fill_prompts(text: str | None, labels: np.ndarray, names: list[str]) -> list[str] | None:
    if text is None:
        return None
    from .prompts import fill_prompt

    return [fill_prompt(text, label, names) for label in labels]


def _gather(data: Any, split: str, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of data-store rows, in the given (shuffled) order."""
    idx = np.asarray(rows)
    sorted_idx = np.sort(idx)
    inverse = np.searchsorted(sorted_idx, idx)
    images = data[f"{split}/images"].get_orthogonal_selection((sorted_idx,))[inverse]
    labels = data[f"{split}/labels"].get_orthogonal_selection((sorted_idx,))[inverse]
    return images, labels


def _forward_chunk(backbone: Backbone, images: np.ndarray, prompts: list[str] | None, keys: list[str],
                   batch_size: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for b in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[b:b + batch_size])
        tokens, cls = backbone.extract(batch, prompts[b:b + batch_size] if prompts else None, keys)
        for key in keys:
            parts.setdefault(key, []).append(tokens[key].to(torch.float16).numpy())
            if key in cls:
                parts.setdefault(f"{key}_cls", []).append(cls[key].to(torch.float16).numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
