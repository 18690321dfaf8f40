"""Shuffled batches from a Zarr feature store at the speed the disk can deliver them.

Why this shape: a per-sample random read touches one chunk per sample (the user's 25 s per batch);
holding the whole layer needs hundreds of GB of RAM. Instead each epoch draws a new permutation of
*chunks*, reads a window of a few whole chunks at a time (parallel raw reads of the chunk files
when the store is uncompressed, zarr otherwise), and draws batches at random from the window.
Stores are written in a seeded shuffled image order, so a window of chunks is already a random
sample of images; the chunk permutation plus the in-window shuffle make the epoch order
near-random. A background thread loads the next window while the current one is consumed.

Memory: at most two windows are alive (the one being consumed and the one being prefetched), so
the loader holds <= `ram_budget_bytes` whatever the store size. When the whole split fits the
budget the loader goes *resident*: it reads the split once and draws a full random permutation
each epoch (on the GPU when one is used and it fits there).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any, Iterator

import numpy as np
import torch

log = logging.getLogger("layerprobe.loader")

MODES = ("auto", "resident", "chunks")
BATCH_BUFFERS = 3  # the batch being built, the one the consumer holds, and one in flight to it
Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, np.ndarray]


class LoaderBudgetError(ValueError):
    """The RAM budget cannot hold two chunks; names the config keys that fix it."""


def chunk_file(arr: Any, chunk: int) -> Path | None:
    """Path of chunk `chunk` (along axis 0) when it is a raw little-endian file on local disk.

    Returns None when a direct read is not exact (compressed, sharded, remote, other key
    encoding); callers then read through zarr.
    """
    try:
        meta = arr.metadata.to_dict()
        root = arr.store.root
    except AttributeError:
        return None
    codecs = meta.get("codecs", ())
    encoding = meta.get("chunk_key_encoding", {})
    if (len(codecs) != 1 or codecs[0].get("name") != "bytes"
            or codecs[0].get("configuration", {}).get("endian", "little") != "little"
            or encoding.get("name") != "default"
            or encoding.get("configuration", {}).get("separator", "/") != "/"):
        return None
    return Path(root) / arr.path / "c" / "/".join([str(chunk)] + ["0"] * (arr.ndim - 1))


def read_chunk_into(arr: Any, chunk: int, out: np.ndarray) -> None:
    """Fill `out` (the chunk's rows) with chunk `chunk` of `arr`, raw read when possible."""
    rows = arr.chunks[0]
    start = chunk * rows
    path = chunk_file(arr, chunk)
    if path is None:
        out[...] = arr[start:start + len(out)]
        return
    if not path.exists():  # zarr skips chunks equal to the fill value
        out[...] = arr.fill_value
        return
    full = len(out) == rows
    # Edge chunks are stored at full chunk shape: read them whole, then keep the valid rows.
    target = out if full else np.empty((rows, *out.shape[1:]), dtype=out.dtype)
    view = memoryview(target.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as f:
        got = f.readinto(view)
    if got != view.nbytes:
        raise OSError(f"{path}: chunk file has {got} bytes, expected {view.nbytes} (store damaged?)")
    if not full:
        out[...] = target[:len(out)]


@dataclass
class Window:
    """A few whole chunks in RAM, their store rows, and the order batches take rows from them."""

    feats: np.ndarray
    cls: np.ndarray | None
    labels: np.ndarray
    rows: np.ndarray  # store row of each window row
    order: np.ndarray  # window-row indices in consumption order


class BufferPool:
    """Reuses a few large arrays once nobody references them any more.

    Why: fresh multi-MB arrays come from mmap, and first-touch page faults cost as much as the
    copy itself. A buffer is handed out again only when its reference count shows that no view
    of it (and no tensor made from it) is alive, so reuse can never overwrite data in use.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffers: list[np.ndarray] = []
        self.lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype: Any, rows: int) -> np.ndarray:
        """A view of `rows` leading rows of a free buffer of `shape`, or a new one."""
        with self.lock:
            for i in range(len(self.buffers)):
                # 2 = the list's reference + getrefcount's argument: nothing else holds it.
                if sys.getrefcount(self.buffers[i]) == 2 and self.buffers[i].shape == shape \
                        and self.buffers[i].dtype == dtype:
                    return self.buffers[i][:rows]
            buffer = np.empty(shape, dtype)
            if len(self.buffers) < self.size:
                self.buffers.append(buffer)
            return buffer[:rows]


class ChunkShuffleLoader:
    """Batches `(feats fp16 (B,T,D), cls (B,D) | None, labels uint8 (B,S,S), store rows)`."""

    def __init__(self, arr: Any, labels: Any, cls: Any | None = None, *, batch_size: int,
                 ram_budget_bytes: int, seed: int = 0, shuffle: bool = True, device: str = "cpu",
                 mode: str = "auto", read_threads: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"loader mode {mode!r}: expected one of {MODES}")
        self.arr, self.labels, self.cls = arr, labels, cls
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.device = torch.device(device)
        self.n, self.chunk_rows = arr.shape[0], arr.chunks[0]
        self.n_chunks = math.ceil(self.n / self.chunk_rows)
        self.row_bytes = (math.prod(arr.shape[1:]) * arr.dtype.itemsize + math.prod(labels.shape[1:])
                          + (math.prod(cls.shape[1:]) * cls.dtype.itemsize if cls is not None else 0))
        self.budget = int(ram_budget_bytes)
        self.read_threads = read_threads or min(4, os.cpu_count() or 1)
        self.epoch = 0
        self._resident: Window | None = None
        self.mode = self._choose_mode(mode)
        chunk_bytes = self.row_bytes * self.chunk_rows
        # Batch buffers (a ring of BATCH_BUFFERS) come first; two windows alive at once (consumed +
        # prefetched) share the rest.
        window_budget = (self.budget - BATCH_BUFFERS * self.row_bytes * batch_size) // 2
        self.window_chunks = max(1, min(self.n_chunks, window_budget // chunk_bytes))
        self._window_pool, self._batch_pool = BufferPool(6), BufferPool(3 * BATCH_BUFFERS)  # per array: feats, labels, cls
        self._readers: ThreadPoolExecutor | None = None
        if window_budget < chunk_bytes and not (self.mode == "resident" and self.device.type != "cuda"):
            raise LoaderBudgetError(
                f"probe.ram_budget_mb ({_mb(self.budget)}) must hold two chunks of {arr.path} plus "
                f"{BATCH_BUFFERS} batches ({_mb(2 * chunk_bytes + BATCH_BUFFERS * self.row_bytes * batch_size)}): "
                f"raise probe.ram_budget_mb, lower probe.batch_size or lower "
                f"store.chunk_images")
        log.info("loader %s: %d images in %d chunks of %d, %s, mode=%s%s", arr.path, self.n, self.n_chunks,
                 self.chunk_rows, _mb(self.row_bytes * self.n), self.mode,
                 f" (window {self.window_chunks} chunks = {_mb(self.window_chunks * chunk_bytes)}, "
                 f"x2 <= budget {_mb(self.budget)}, raw reads={chunk_file(arr, 0) is not None})"
                 if self.mode == "chunks" else f" (resident on {self.device}, budget {_mb(self.budget)})")

    def _choose_mode(self, mode: str) -> str:
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

    # --- reading --------------------------------------------------------------------------------
    def _span(self, chunk: int) -> tuple[int, int]:
        """Store rows [start, stop) of a chunk (the last one may be partial)."""
        return chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n)

    def _read_window(self, chunks: list[int], rng: np.random.Generator | None) -> Window:
        spans = [self._span(c) for c in chunks]
        total = sum(b - a for a, b in spans)
        cap = self.window_chunks * self.chunk_rows if self.mode == "chunks" else self.n

        def buffer(arr: Any) -> np.ndarray:
            if self.mode == "resident":  # read once, kept for every epoch: no pooling
                return np.empty((total, *arr.shape[1:]), dtype=arr.dtype)
            return self._window_pool.get((cap, *arr.shape[1:]), arr.dtype, total)

        feats, labels = buffer(self.arr), buffer(self.labels)
        cls = buffer(self.cls) if self.cls is not None else None
        jobs, offset = [], 0
        for c, (a, b) in zip(chunks, spans):
            sl = slice(offset, offset + b - a)
            jobs += [(self.arr, c, feats[sl]), (self.labels, c, labels[sl])]
            if cls is not None:
                jobs.append((self.cls, c, cls[sl]))
            offset += b - a
        if self._readers is None:
            self._readers = ThreadPoolExecutor(self.read_threads, thread_name_prefix="loader-read")
        list(self._readers.map(lambda job: read_chunk_into(*job), jobs))  # readinto releases the GIL
        del jobs
        rows = np.concatenate([np.arange(a, b) for a, b in spans])
        order = rng.permutation(total) if rng is not None else np.arange(total)
        return Window(feats, cls, labels, rows, order)

    def _windows(self) -> list[list[int]]:
        """This epoch's chunk windows (chunks mode; resident mode has one window of everything)."""
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        chunks = rng.permutation(self.n_chunks).tolist() if self.shuffle else list(range(self.n_chunks))
        # Ramp up 1, 2, 4, … chunks: the first window is read before any batch can be drawn,
        # so a small one keeps the unhidden start-up read short.
        windows, i, size = [], 0, 1
        while i < len(chunks):
            windows.append(chunks[i:i + size])
            i, size = i + size, min(2 * size, self.window_chunks)
        return windows

    def _window_rngs(self, count: int) -> list[np.random.Generator | None]:
        if not self.shuffle:
            return [None] * count
        return [np.random.default_rng([self.seed, self.epoch, 2, i]) for i in range(count)]

    def _resident_window(self) -> Window:
        if self._resident is None:
            self._resident = self._load_resident()
        window = self._resident
        rng = self._window_rngs(1)[0]
        window.order = rng.permutation(len(window.rows)) if rng is not None else np.arange(len(window.rows))
        return window

    def _load_resident(self) -> Window:
        if self.device.type != "cuda":
            return self._read_window(list(range(self.n_chunks)), None)
        # On a GPU: upload window by window, so host RAM stays within the budget.
        feats = torch.empty(self.arr.shape, dtype=torch.float16, device=self.device)
        labels = torch.empty(self.labels.shape, dtype=torch.uint8, device=self.device)
        cls = torch.empty(self.cls.shape, dtype=torch.float16, device=self.device) if self.cls is not None else None
        w = self.window_chunks
        for first in range(0, self.n_chunks, w):
            part = self._read_window(list(range(first, min(first + w, self.n_chunks))), None)
            rows = slice(int(part.rows[0]), int(part.rows[-1]) + 1)
            feats[rows].copy_(torch.from_numpy(part.feats))
            labels[rows].copy_(torch.from_numpy(part.labels))
            if cls is not None:
                cls[rows].copy_(torch.from_numpy(part.cls))
        return Window(feats, cls, labels, np.arange(self.n), np.arange(self.n))  # type: ignore[arg-type]

    def _prefetched(self, windows: list[list[int]], first: int) -> Iterator[Window]:
        """Windows from index `first`, loaded by a background thread, at most two alive.

        A slot is released only after the consumer has dropped its reference to the previous
        window, so the producer never starts a third one.
        """
        rngs = self._window_rngs(len(windows))
        slots = threading.Semaphore(2)
        queue: Queue[Window | BaseException | None] = Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for i in range(first, len(windows)):
                    slots.acquire()
                    if stop.is_set():
                        return
                    queue.put(self._read_window(windows[i], rngs[i]))
                queue.put(None)
            except BaseException as exc:  # surfaced in the consumer, with the store named
                queue.put(exc)

        thread = threading.Thread(target=produce, name="loader-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"reading {self.arr.store}/{self.arr.path} failed: {item}") from item
                yield item
                item = None
                slots.release()
        finally:
            stop.set()
            slots.release()

    # --- batches --------------------------------------------------------------------------------
    def iterate(self, skip: int = 0) -> Iterator[Batch]:
        """This epoch's batches, starting at batch `skip` (resume) without reading skipped windows."""
        start = skip * self.batch_size
        if self.mode == "resident":
            return self._batches(iter([self._resident_window()]), start)
        windows = self._windows()
        sizes = [sum(b - a for a, b in map(self._span, w)) for w in windows]
        first, offset = 0, 0
        while first < len(windows) and offset + sizes[first] <= start:
            offset += sizes[first]
            first += 1
        return self._batches(self._prefetched(windows, first), start - offset)

    def _batches(self, windows: Iterator[Window], skip_rows: int) -> Iterator[Batch]:
        """Each row is copied once, straight from its window into its batch buffer; a batch that
        spans two windows is half-filled before the older window is released."""
        bs = self.batch_size
        out: Rows | None = None
        filled = 0
        while (window := next(windows, None)) is not None:
            order, skip_rows, pos = window.order[skip_rows:], 0, 0
            while pos < len(order):
                if out is None:
                    out, filled = self._new_batch(window), 0
                take = min(bs - filled, len(order) - pos)
                _fill(out, filled, window, order[pos:pos + take])
                filled, pos = filled + take, pos + take
                if filled == bs:
                    yield self._emit(out, bs)
                    out = None
            window = order = None  # type: ignore[assignment]  # free it before the next one loads
        if out is not None:
            yield self._emit(out, filled)

    def _new_batch(self, window: Window) -> Rows:
        def buffer(like: Any) -> Any:
            if like is None:
                return None
            if isinstance(like, torch.Tensor):  # resident on the GPU
                return torch.empty((self.batch_size, *like.shape[1:]), dtype=like.dtype, device=like.device)
            return self._batch_pool.get((self.batch_size, *like.shape[1:]), like.dtype, self.batch_size)

        return (buffer(window.feats), buffer(window.cls), buffer(window.labels),
                np.empty(self.batch_size, dtype=np.int64))

    def _emit(self, rows: Rows, n: int) -> Batch:
        feats, cls, labels, index = (None if a is None else a[:n] for a in rows)
        return (self._to_device(feats), self._to_device(cls) if cls is not None else None,
                self._to_device(labels), index)

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(array, torch.Tensor):  # resident on the GPU already
            return array
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


Rows = tuple[Any, Any, Any, np.ndarray]  # feats, cls | None, labels, store rows


def _fill(out: Rows, start: int, window: Window, idx: np.ndarray) -> None:
    """out[start:start+len(idx)] = window rows idx, for every array (one copy per byte)."""
    stop = start + len(idx)
    for dst, src in zip(out, (window.feats, window.cls, window.labels, window.rows)):
        if dst is None:
            continue
        if isinstance(src, torch.Tensor):
            torch.index_select(src, 0, torch.as_tensor(idx, device=src.device), out=dst[start:stop])
        else:
            np.take(src, idx, axis=0, out=dst[start:stop], mode="clip")  # "raise" buffers out: 2x slower


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"
