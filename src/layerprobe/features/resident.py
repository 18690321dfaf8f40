"""Resident mode: the whole split read once into memory (host RAM, or the GPU chunk by chunk so
that host RAM stays within the budget). Batches then take the epoch's order from memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .buffers import Window
from .chunkfiles import read_chunk_into


def load_resident(arrays: list[Any], spans: list[tuple[int, int]], device: torch.device, pool: ThreadPoolExecutor,
                  has_cls: bool) -> Window:
    """Arrays (feats, labels[, cls]) read whole; `spans`: store rows [start, stop) per chunk."""
    n = spans[-1][1] if spans else 0
    if device.type != "cuda":
        out = [np.empty(a.shape, dtype=a.dtype) for a in arrays]
        jobs = [(k, c) for c in range(len(spans)) for k in range(len(arrays))]
        list(pool.map(lambda job: read_chunk_into(arrays[job[0]], job[1], out[job[0]][slice(*spans[job[1]])]), jobs))
        return Window(out[0], out[2] if has_cls else None, out[1], np.arange(n), np.arange(n))
    dev = [torch.empty(a.shape, dtype=torch.from_numpy(np.empty(0, a.dtype)).dtype, device=device) for a in arrays]
    for c, (start, stop) in enumerate(spans):
        for k, array in enumerate(arrays):
            host = np.empty((stop - start, *array.shape[1:]), dtype=array.dtype)
            read_chunk_into(array, c, host)
            dev[k][start:stop].copy_(torch.from_numpy(host))
    return Window(dev[0], dev[2] if has_cls else None, dev[1], np.arange(n), np.arange(n))  # type: ignore[arg-type]
