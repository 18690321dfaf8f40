"""The probe's epoch order, and the memory a shuffle window needs (no torch: the DAG build uses it).

The order in which a probe sees its training images is a function of the probe seed, the epoch,
the store's chunking and `probe.shuffle_window_chunks`, and of nothing else: not of the RAM
budget, the loader mode or the GPU. Two machines with the same config train the same probe; a
resume on another node continues the same order. Memory decides only how far ahead the loader
reads (one window, or the next one too).

Each epoch draws a permutation of the chunks and cuts it into windows of 1, 2, 4, ... up to W
chunks (a small first window keeps the unhidden start-up read short); the rows of each window are
permuted. Stores are written in a seeded shuffled image order, so this is nearly a full shuffle
(a test checks the probe's mIoU against a full permutation). When W covers every chunk of the
split, the order is a full random permutation of the split's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_CHUNKS = 32  # probe.shuffle_window_chunks's default (the schema's), for direct use
# Batches alive at once: one being built, one queued, the one the consumer takes, and the one it
# still holds while asking for the next (a `for` loop keeps it until `next` returns).
BATCH_BUFFERS = 4
# Of the budget, kept outside windows and batches: reader threads' stacks and malloc arenas,
# index arrays, temporaries. Measured: 5-9 MiB whatever the budget (the sweep in
# docs/BENCHMARKS.md peaked at 129-133 MiB above baseline for a 128 MiB budget without it).
MARGIN_BYTES, MARGIN_FRACTION = 8 * 2**20, 1 / 8


def margin_bytes(budget: int) -> int:
    """The part of a RAM budget the loader keeps free for its own overhead."""
    return min(MARGIN_BYTES, int(budget * MARGIN_FRACTION))


def window_bytes(window_chunks: int, chunk_bytes: int, batch_bytes: int, windows: int = 1) -> int:
    """What `windows` shuffle windows of disk-read chunks and the batch buffers hold."""
    return windows * window_chunks * chunk_bytes + BATCH_BUFFERS * batch_bytes


def fits(budget: int, need: int) -> bool:
    return need <= budget - margin_bytes(budget)


def min_budget(need: int) -> int:
    """The smallest budget whose usable part (budget less the margin) holds `need` bytes."""
    small = math.ceil(need / (1 - MARGIN_FRACTION))
    return small if margin_bytes(small) < MARGIN_BYTES else need + MARGIN_BYTES


def largest_window(budget: int, chunk_bytes: int, batch_bytes: int, n_chunks: int, windows: int = 2) -> int:
    """The most chunks per window such that `windows` of them and the batches fit the budget
    (for sequential reads, whose order no window changes)."""
    room = budget - margin_bytes(budget) - BATCH_BUFFERS * batch_bytes
    return max(1, min(n_chunks, room // max(1, windows * chunk_bytes)))


@dataclass(frozen=True)
class WindowPlan:
    window_chunks: int  # chunks per window (the read size; the order's only when shuffling)
    need: int  # bytes one window and the batch buffers hold
    fits: bool  # the budget holds one window
    prefetch: bool  # the budget holds two: the next window is read while this one is consumed


def plan_windows(budget: int, row_bytes: int, chunk_rows: int, batch_size: int, n_chunks: int,
                 shuffle_window: int, shuffle: bool = True) -> WindowPlan:
    """The loader's windows under a budget. Shuffling, the window is the shuffle window (it
    decides the order); without shuffling the order is the store's, so the window is only a read
    size: what two of fit the budget."""
    chunk_bytes, batch_bytes = row_bytes * chunk_rows, row_bytes * batch_size
    window = (max(1, min(shuffle_window, n_chunks)) if shuffle
              else largest_window(budget, chunk_bytes, batch_bytes, n_chunks))
    need = window_bytes(window, chunk_bytes, batch_bytes)
    return WindowPlan(window, need, fits(budget, need),
                      fits(budget, window_bytes(window, chunk_bytes, batch_bytes, windows=2)))


def windows(n_chunks: int, window_chunks: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """This epoch's windows of chunks (in reading order)."""
    if window_chunks >= n_chunks and shuffle:  # one window of the whole split: a full permutation
        return [list(range(n_chunks))]
    rng = np.random.default_rng([seed, epoch, 1])
    chunks = rng.permutation(n_chunks).tolist() if shuffle else list(range(n_chunks))
    out, i, size = [], 0, 1
    while i < len(chunks):
        out.append(chunks[i:i + size])
        i, size = i + size, min(2 * size, window_chunks)
    return out


def window_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that permutes the rows of window `index` of an epoch."""
    return np.random.default_rng([seed, epoch, 2, index])


def chunk_span(chunk: int, chunk_rows: int, n: int) -> tuple[int, int]:
    """Store rows [start, stop) of a chunk (the last one may be partial)."""
    return chunk * chunk_rows, min((chunk + 1) * chunk_rows, n)


def window_rows(chunks: list[int], chunk_rows: int, n: int) -> np.ndarray:
    return np.concatenate([np.arange(*chunk_span(c, chunk_rows, n)) for c in chunks])


def epoch_order(n: int, chunk_rows: int, window_chunks: int, seed: int, epoch: int,
                shuffle: bool = True) -> np.ndarray:
    """The store rows of a split in the order an epoch's batches take them."""
    if not shuffle:
        return np.arange(n)
    n_chunks = math.ceil(n / chunk_rows)
    parts = []
    for i, chunks in enumerate(windows(n_chunks, window_chunks, seed, epoch)):
        rows = window_rows(chunks, chunk_rows, n)
        parts.append(rows[window_rng(seed, epoch, i).permutation(len(rows))])
    return np.concatenate(parts)
