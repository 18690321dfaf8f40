"""Shuffled batches from a Zarr feature store at the speed the disk can deliver them.

Why this shape: a per-sample random read touches one chunk per sample (the user's 25 s per batch);
holding the whole layer needs hundreds of GB of RAM. Instead each epoch draws a new permutation of
*chunks*, takes them a window of `probe.shuffle_window_chunks` chunks at a time, and draws batches
at random from the rows of the window (`epoch_order`: the order depends on the seed, the store's
chunking and that window only, never on the budget, the mode or the machine).

How bytes move (`chunkfiles.ChunkFiles`): a chunk the page cache holds is read row by row with
`preadv` straight into the batch (one copy per byte, as the read floor); a chunk on disk is read
whole, with `O_DIRECT` into a page-aligned window buffer where the file system allows it, and its
rows are then copied into the batch. A background thread assembles batches ahead of the consumer
(reads run in a small thread pool, several in flight, which a disk or a parallel file system
serves faster than one sequential reader), so the caller's step overlaps the next batch's reads.

Memory: one window of disk-read chunks (two when they fit: the next one is then read in the
background) and a ring of batch buffers are alive, so the loader holds <= `ram_budget_bytes`
whatever the store size; a budget that cannot hold one window is an error. When the whole split
fits the budget the loader goes *resident*: it reads the split once and takes the same order from
memory (on the GPU when one is used and it fits there).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Queue
from typing import Any

import numpy as np
import torch

from . import epoch_order as order_of
from .buffers import BufferPool, Window
from .chunkfiles import ChunkFiles, chunk_file, keep_handles_open, read_chunk_into  # noqa: F401 - re-exported
from .epoch_order import BATCH_BUFFERS, DEFAULT_WINDOW_CHUNKS, MARGIN_FRACTION, margin_bytes  # noqa: F401
from .inflight import InFlightTuner
from .resident import load_resident
from .staging import Batch, DeviceStager

log = logging.getLogger("layerprobe.loader")

MODES = ("auto", "resident", "chunks")

# Concurrent chunk reads to start with (then tuned): SSDs and parallel file systems serve several at once.
READS_IN_FLIGHT = 4


class LoaderBudgetError(ValueError):
    """The RAM budget cannot hold one shuffle window; names the config keys that fix it."""


class ChunkShuffleLoader:
    """Batches `(feats fp16 (B,T,D), cls (B,D) | None, labels uint8 (B,S,S), store rows)`."""

    def __init__(self, arr: Any, labels: Any, cls: Any | None = None, *, batch_size: int,
                 ram_budget_bytes: int, window_chunks: int = DEFAULT_WINDOW_CHUNKS, seed: int = 0,
                 shuffle: bool = True, device: str = "cpu", mode: str = "auto", read_threads: int | None = None,
                 direct_io: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"loader mode {mode!r}: expected one of {MODES}")
        self.arr, self.labels, self.cls = arr, labels, cls
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.device = torch.device(device)
        self.n, self.chunk_rows = arr.shape[0], arr.chunks[0]
        self.n_chunks = math.ceil(self.n / self.chunk_rows)
        self.arrays = [a for a in (arr, labels, cls) if a is not None]
        self.files = [ChunkFiles(a, direct=direct_io) for a in self.arrays]
        self.row_bytes = sum(f.row_nbytes for f in self.files)
        self.budget = int(ram_budget_bytes)
        # Reads in flight: tuned on measured throughput, or fixed when given.
        self.inflight = (InFlightTuner(start=READS_IN_FLIGHT) if read_threads is None
                         else InFlightTuner(start=read_threads, lowest=read_threads, highest=read_threads))
        self.read_threads = self.inflight.highest
        # Copies from the page cache are CPU work: one thread per core, at most two.
        self.copy_threads = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1, self.read_threads))
        self.epoch = 0
        self._resident: Window | None = None
        self.mode = self._choose_mode(mode)
        chunk_bytes = self.row_bytes * self.chunk_rows
        self.shuffle_window = int(window_chunks)
        plan = order_of.plan_windows(self.budget, self.row_bytes, self.chunk_rows, batch_size, self.n_chunks,
                                     self.shuffle_window, shuffle)
        self.window_chunks, self.prefetch = plan.window_chunks, plan.prefetch
        if self.mode == "chunks" and not plan.fits:
            raise LoaderBudgetError(
                f"probe.ram_budget_mb ({_mb(self.budget)}) must hold one shuffle window of {arr.path} "
                f"(probe.shuffle_window_chunks = {self.window_chunks} chunks of {_mb(chunk_bytes)}) plus "
                f"{BATCH_BUFFERS} batches and the loader's own margin: {_mb(order_of.min_budget(plan.need))} at "
                f"least; raise probe.ram_budget_mb, or lower probe.shuffle_window_chunks, probe.batch_size or "
                f"store.chunk_images")
        if self.mode == "chunks":
            keep_handles_open(self.files, self.window_chunks, self.n_chunks)
        self._window_pool = BufferPool(2 * self.window_chunks * len(self.arrays))
        self._batch_pool = BufferPool(BATCH_BUFFERS * len(self.arrays))
        self._readers: ThreadPoolExecutor | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        self._stager = DeviceStager(self.device)
        self.stats = {"cached_chunks": 0, "disk_chunks": 0, "uncached_rows": 0}
        self._warm = False  # the last window came wholly from the page cache
        log.info("loader %s: %d images in %d chunks of %d, %s, mode=%s%s", arr.path, self.n, self.n_chunks,
                 self.chunk_rows, _mb(self.row_bytes * self.n), self.mode,
                 f" (window {self.window_chunks} chunks = {_mb(self.window_chunks * chunk_bytes)}, "
                 f"{'next window read ahead' if self.prefetch else 'no read-ahead: two windows exceed'} "
                 f"budget {_mb(self.budget)}; raw reads={self.files[0].raw}, "
                 f"O_DIRECT={self.files[0].direct}, {self.inflight.count} reads in flight, tuned)"
                 if self.mode == "chunks" else f" (resident on {self.device}, budget {_mb(self.budget)})")

    def _choose_mode(self, mode: str) -> str:
        """Resident when the split fits the budget (or the GPU): faster, never another order."""
        if mode != "auto":
            return mode
        total = self.row_bytes * self.n
        if total <= self.budget:
            return "resident"
        if self.device.type == "cuda" and total <= 0.8 * torch.cuda.mem_get_info(self.device)[0]:
            return "resident"  # held on the GPU, uploaded window by window
        return "chunks"

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pool(self) -> ThreadPoolExecutor:
        if self._readers is None:  # window reads in flight + row copies from the producer thread
            self._readers = ThreadPoolExecutor(self.read_threads + self.copy_threads, thread_name_prefix="loader-read")
        return self._readers

    # --- the epoch's order (epoch_order: the same whatever the mode, budget or bytes' path) ----
    def _span(self, chunk: int) -> tuple[int, int]:
        """Store rows [start, stop) of a chunk (the last one may be partial)."""
        return order_of.chunk_span(chunk, self.chunk_rows, self.n)

    def _windows(self) -> list[list[int]]:
        """This epoch's chunk windows (chunks mode; resident mode draws the same rows from memory)."""
        return order_of.windows(self.n_chunks, self.window_chunks, self.seed, self.epoch, self.shuffle)

    def _window_rngs(self, count: int) -> list[np.random.Generator | None]:
        if not self.shuffle:
            return [None] * count
        return [order_of.window_rng(self.seed, self.epoch, i) for i in range(count)]

    def order(self) -> np.ndarray:
        """This epoch's store rows in the order batches take them (no IO; for statistics)."""
        return order_of.epoch_order(self.n, self.chunk_rows, self.shuffle_window, self.seed, self.epoch,
                                    self.shuffle)

    # --- reading a window -------------------------------------------------------------------------
    def _read_window(self, chunks: list[int], rng: np.random.Generator | None) -> Window:
        """A window of chunks: those the page cache holds stay on disk-cache for row reads, the
        others are read whole (several in flight) into pooled, page-aligned buffers."""
        spans = [self._span(c) for c in chunks]
        rows = np.concatenate([np.arange(a, b) for a, b in spans])
        order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
        # The features decide (the other arrays are a few % of the bytes and read with them). While
        # everything came from the page cache, no chunk is probed: rows are read with RWF_NOWAIT,
        # and one that was not cached switches probing back on for the next windows.
        cold = [] if self._warm else [c for c in chunks if not self.files[0].cached(c)]
        self._warm = not cold
        self.stats["cached_chunks"] += len(chunks) - len(cold)
        self.stats["disk_chunks"] += len(cold)
        buffers: list[dict[int, np.ndarray]] = [{} for _ in self.files]
        jobs = []
        for k, f in enumerate(self.files):  # array by array: dealt out in turn, every reader gets feature chunks
            for c in cold:
                out = self._window_pool.get((self.chunk_rows, *f.arr.shape[1:]), f.arr.dtype, self.chunk_rows)
                buffers[k][c] = out
                jobs.append((f, c, out))
        self._read_chunks(jobs)
        sequence = rows[order]
        chunk_of, local = np.divmod(sequence, self.chunk_rows)
        return Window(None, None, None, rows, order, buffers, sequence, chunk_of.tolist(), local.tolist())

    def _read_chunks(self, jobs: list[tuple[ChunkFiles, int, np.ndarray]]) -> None:
        """Whole-chunk reads, `inflight.count` at a time; the measured throughput tunes the count."""
        if not jobs:
            return
        k = min(self.inflight.count, len(jobs))
        start = time.perf_counter()
        groups = [jobs[j::k] for j in range(k)]
        list(self._pool().map(lambda group: [f.read_chunk(c, out) for f, c, out in group], groups))
        self.inflight.observe(sum(out.nbytes for _, _, out in jobs), time.perf_counter() - start, k)

    def _trim_handles(self) -> None:
        """A window's rows are all in batches: close the oldest read handles beyond `keep_open`."""
        for f in self.files:
            f.trim()

    # --- resident mode ----------------------------------------------------------------------------
    def _resident_window(self) -> Window:
        if self._resident is None:
            self._resident = self._load_resident()
        window = self._resident
        window.order = self.order()  # window rows are store rows here
        return window

    def _load_resident(self) -> Window:
        spans = [self._span(c) for c in range(self.n_chunks)]
        return load_resident(self.arrays, spans, self.device, self._pool(), has_cls=self.cls is not None)

    # --- batches ------------------------------------------------------------------------------------
    def iterate(self, skip: int = 0) -> Iterator[Batch]:
        """This epoch's batches, starting at batch `skip` (resume) without reading skipped windows."""
        start = skip * self.batch_size
        if self.mode == "resident":
            return self._resident_batches(self._resident_window(), start)
        windows = self._windows()
        sizes = [sum(b - a for a, b in map(self._span, w)) for w in windows]
        first, offset = 0, 0
        while first < len(windows) and offset + sizes[first] <= start:
            offset += sizes[first]
            first += 1
        return self._pipelined(windows, first, start - offset)

    def _resident_batches(self, window: Window, start: int) -> Iterator[Batch]:
        order = window.order[start:]
        for pos in range(0, len(order), self.batch_size):
            idx = order[pos:pos + self.batch_size]
            out = self._new_batch(window, len(idx))
            for dst, src in zip(out, (window.feats, window.cls, window.labels, window.rows)):
                if dst is None:
                    continue
                if isinstance(src, torch.Tensor):
                    torch.index_select(src, 0, torch.as_tensor(idx, device=src.device), out=dst)
                else:
                    np.take(src, idx, axis=0, out=dst, mode="clip")  # "raise" buffers out: 2x slower
            yield self._emit(out)

    def _new_batch(self, window: Window, n: int) -> tuple[Any, Any, Any, np.ndarray]:
        def buffer(arr: Any, like: Any) -> Any:
            if arr is None:
                return None
            if isinstance(like, torch.Tensor):  # resident on the GPU
                return torch.empty((n, *like.shape[1:]), dtype=like.dtype, device=like.device)
            return self._batch_pool.get((self.batch_size, *arr.shape[1:]), arr.dtype, n)

        return (buffer(self.arr, window.feats), buffer(self.cls, window.cls), buffer(self.labels, window.labels),
                np.empty(n, dtype=np.int64))

    def _pipelined(self, windows: list[list[int]], first: int, skip_rows: int) -> Iterator[Batch]:
        """Batches assembled by a background thread, one ahead of the consumer; windows
        are read when the first of their rows is needed and released after their last."""
        rngs = self._window_rngs(len(windows))
        queue: Queue[Any] = Queue(maxsize=1)  # with the one being built and the consumer's two: BATCH_BUFFERS
        stop = threading.Event()

        def produce() -> None:
            try:
                for batch in self._assemble(windows, rngs, first, skip_rows, stop):
                    queue.put(self._stage(batch))
                queue.put(None)
            except BaseException as exc:  # surfaced in the consumer, with the store named
                queue.put(exc)

        thread = threading.Thread(target=produce, name="loader-prefetch", daemon=True)
        thread.start()
        try:
            while (item := queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"reading {self.arr.store}/{self.arr.path} failed: {item}") from item
                yield self._receive(*item)
                item = None
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                if queue.empty():
                    thread.join(0.05)
                else:
                    queue.get_nowait()

    def _assemble(self, windows: list[list[int]], rngs: list[Any], first: int, skip_rows: int,
                  stop: threading.Event) -> Iterator[tuple[Any, ...]]:
        """The epoch's row sequence (windows' orders, concatenated) cut into batches.

        A window's rows are copied into the batch being built as soon as they are taken, so a
        window is dropped once its last row is taken, and (when two fit the budget) the next one is
        read in the background while this one is consumed: at most two windows alive, whatever the
        batch size."""
        prefetcher = self._prefetch_pool()

        def read(i: int) -> Future[Window] | None:
            return prefetcher.submit(self._read_window, windows[i], rngs[i]) if i < len(windows) else None

        out, count, upcoming = self._new_batch_buffers(), 0, read(first)
        window: Window | None = None
        try:
            for i in range(first, len(windows)):
                window = upcoming.result()  # type: ignore[union-attr]
                # Read ahead when two windows fit the budget; else the next is read once this one is dropped.
                upcoming = read(i + 1) if self.prefetch else None
                pos, skip_rows = skip_rows, 0
                while pos < len(window.order):
                    take = min(self.batch_size - count, len(window.order) - pos)
                    self._copy_rows(window, pos, take, out, count)
                    count, pos = count + take, pos + take
                    if count == self.batch_size:
                        yield self._batch(out, count)
                        if stop.is_set():  # the consumer left (a signal, an error): no more reads
                            return
                        out, count = self._new_batch_buffers(), 0
                self._trim_handles()
                window = None  # its buffers go back to the pool
                if not self.prefetch:
                    upcoming = read(i + 1)
            if count:
                yield self._batch(out, count)
        finally:  # on an early exit: the window being read finishes before the handles are trimmed
            if upcoming is not None:
                upcoming.exception()  # waits for it
            self._trim_handles()

    def _prefetch_pool(self) -> ThreadPoolExecutor:
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="loader-window")
        return self._prefetcher

    def _new_batch_buffers(self) -> list[np.ndarray]:
        """Feats, labels[, cls] buffers of a full batch, and the store rows; see `_batch`."""
        return [self._batch_pool.get((self.batch_size, *a.shape[1:]), a.dtype, self.batch_size)
                for a in self.arrays] + [np.empty(self.batch_size, dtype=np.int64)]

    def _batch(self, out: list[np.ndarray], n: int) -> tuple[Any, ...]:
        feats, labels, rows = out[0][:n], out[1][:n], out[-1][:n]
        cls = out[2][:n] if self.cls is not None else None
        return feats, cls, labels, rows

    def _copy_rows(self, window: Window, begin: int, count: int, out: list[np.ndarray], at: int) -> None:
        """Window rows begin..begin+count (in consumption order) into batch rows at..: disk-read
        chunks copied from their buffers, cached chunks read row by row into the batch."""
        store_rows = window.sequence[begin:begin + count]
        out[-1][at:at + count] = store_rows
        if not any(window.buffers):  # the whole window is in the page cache: no masks to build
            self._read_cached(window.chunk_of[begin:begin + count], window.local[begin:begin + count],
                              list(range(at, at + count)), out)
            return
        chunks, local = np.divmod(store_rows, self.chunk_rows)
        batch_rows = np.arange(at, at + count)
        cached = np.ones(count, dtype=bool)
        for k in range(len(self.files)):
            for chunk, buffer in window.buffers[k].items():
                hit = chunks == chunk
                if hit.any():
                    out[k][batch_rows[hit]] = buffer[local[hit]]
                    cached &= ~hit
        if cached.any():
            self._read_cached(chunks[cached].tolist(), local[cached].tolist(), batch_rows[cached].tolist(), out)

    def _read_cached(self, chunks: list[int], local: list[int], batch_rows: list[int], out: list[np.ndarray]) -> None:
        """Rows of cached chunks read straight into the batch, split over the copy threads (on
        two cores, two threads copy 1.3x faster than one: the kernel copy is the work). The
        helpers get their shares first, so they copy while this thread starts its own."""
        # Each thread gets every copy_threads-th row of every array: an even share of the large rows.
        n = min(self.copy_threads, len(chunks))
        shares = [[(k, chunks[j::n], local[j::n], batch_rows[j::n]) for k in range(len(self.files))] for j in range(n)]
        helpers = [self._pool().submit(self._read_share, share, out) for share in shares[1:]]
        self._read_share(shares[0], out)
        for helper in helpers:
            helper.result()

    def _read_share(self, share: list[tuple[int, list[int], list[int], list[int]]], out: list[np.ndarray]) -> None:
        misses = 0
        for k, chunks, rows, at in share:
            misses += self.files[k].read_rows(chunks, rows, out[k], at, nowait=k == 0)
        if misses:
            self.stats["uncached_rows"] += misses
            self._warm = False

    def _stage(self, batch: tuple[Any, ...]) -> tuple[Batch, Any]:
        return self._stager.stage(batch)

    def _receive(self, staged: Batch, event: Any) -> Batch:
        return self._stager.receive(staged, event)

    def _emit(self, batch: tuple[Any, ...]) -> Batch:
        return self._stager.emit(batch)

    def close(self) -> None:
        for f in self.files:
            f.close()
        for pool in (self._readers, self._prefetcher):
            if pool is not None:
                pool.shutdown(wait=False)


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"
