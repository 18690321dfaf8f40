"""Raw reads of a Zarr array's chunk files, chosen by where the bytes are.

The feature stores are uncompressed, so chunk `c` of an array is one file of raw little-endian
rows (`chunk_file`), and row `r` of it is one contiguous byte range. Two ways to get rows:

- **From the page cache** (the layer was read recently, or fits in RAM): each row is read with
  `os.preadv` straight into its place in the batch. One copy per byte, the same work as the
  sequential read floor; whole-chunk staging would add a second memcpy on the same two cores.
- **From the disk**: row-sized reads in shuffled order defeat readahead, so the whole chunk is
  read at once, with `O_DIRECT` into a page-aligned buffer when the file system allows it (the
  device DMAs into the buffer: no kernel copy, ~10x less kernel CPU measured here) and with a
  buffered read otherwise (EINVAL from tmpfs and other file systems, or a chunk size that is not
  a multiple of the 4 KiB page). Rows are then copied from the buffer into the batch.

`cached` decides between them for each chunk, with `RWF_NOWAIT` reads of two pages, which fail
instead of waiting when the data is not in the page cache.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("layerprobe.loader")
PAGE = 4096
RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


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


class ChunkPaths:
    """Chunk file paths of one raw array from one template: building a path through zarr's
    metadata (`chunk_file`) costs ~50-170 us, once per chunk and array on every read or write."""

    def __init__(self, arr: Any) -> None:
        first = chunk_file(arr, 0)
        self.raw = first is not None
        # "<dir>/c/{chunk}/0/0": the chunk number, then one "0" per further (unchunked) axis.
        self._root = str(first.parents[arr.ndim - 1]) if first is not None else ""
        self._tail = "/".join(["0"] * (arr.ndim - 1))

    def __call__(self, chunk: int) -> Path | None:
        return Path(self.text(chunk)) if self.raw else None

    def text(self, chunk: int) -> str:
        """The path as a string (for os.open: no Path object per open)."""
        return f"{self._root}/{chunk}/{self._tail}" if self._tail else f"{self._root}/{chunk}"


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose data starts on a page boundary (what O_DIRECT needs)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + PAGE, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class ChunkFiles:
    """Row and whole-chunk reads of one array; thread-safe (pread has no shared offset).

    Read handles stay open across windows and epochs, up to `keep_open` of them (the oldest are
    closed first): opening a chunk file costs ~15-25 us, once per chunk and epoch otherwise,
    ~16% of a warm epoch's row reads (profiled on CLIP-B/16 rows)."""

    def __init__(self, arr: Any, direct: bool = True, keep_open: int = 1024) -> None:
        self.arr = arr
        self.chunk_rows = int(arr.chunks[0])
        self.row_nbytes = math.prod(arr.shape[1:]) * arr.dtype.itemsize
        self.chunk_nbytes = self.chunk_rows * self.row_nbytes
        self.path = ChunkPaths(arr)
        self.raw = self.path.raw
        self.direct = direct and self.raw and hasattr(os, "O_DIRECT") and self.chunk_nbytes % PAGE == 0
        self.keep_open = keep_open
        self._fds: dict[int, int] = {}  # insertion order: the oldest first
        self._lock = threading.Lock()
        self.stats = {"direct_chunks": 0, "buffered_chunks": 0, "rows": 0}

    # --- file handles ---------------------------------------------------------------------------
    def _fd(self, chunk: int) -> int | None:
        """A buffered read handle on the chunk file, kept open; None when zarr wrote no file
        (every value is the fill value)."""
        with self._lock:
            if chunk in self._fds:  # newest again: `trim` keeps the handles of the windows in use
                fd = self._fds[chunk] = self._fds.pop(chunk)
                return fd if fd >= 0 else None
        try:
            fd = os.open(self.path.text(chunk), os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        with self._lock:
            if chunk in self._fds:  # another thread opened it meanwhile
                if fd >= 0:
                    os.close(fd)
                return self._fds[chunk] if self._fds[chunk] >= 0 else None
            self._fds[chunk] = fd
        return fd if fd >= 0 else None

    def trim(self) -> None:
        """Close the oldest handles beyond `keep_open`. Called by the loader's producer as a
        window is dropped, when no row read is running; the only other user then is the next
        window's probe, whose handles `_fd` has just made the newest (keep_open >= 2 windows)."""
        with self._lock:
            excess = max(0, len(self._fds) - self.keep_open)
            fds = [self._fds.pop(c) for c in list(self._fds)[:excess]]
        self._close(fds)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        self._close(fds)

    @staticmethod
    def _close(fds: list[int]) -> None:
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # --- which path -----------------------------------------------------------------------------
    def cached(self, chunk: int) -> bool:
        """True when the chunk's first and middle pages are in the page cache (RWF_NOWAIT reads
        return at once instead of going to the disk)."""
        if not self.raw or not RWF_NOWAIT:
            return False
        fd = self._fd(chunk)
        if fd is None:
            return True  # nothing to read: the fill value
        probe = bytearray(min(PAGE, self.chunk_nbytes))
        for offset in {0, (self.chunk_nbytes // 2) // PAGE * PAGE}:
            try:
                if os.preadv(fd, [probe], offset, RWF_NOWAIT) < len(probe):
                    return False
            except BlockingIOError:
                return False
            except OSError as err:  # RWF_NOWAIT unsupported here (old kernel, some file systems)
                if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    return False
                raise
        return True

    # --- reads ----------------------------------------------------------------------------------
    def read_rows(self, chunks: list[int], rows: list[int], out: np.ndarray, at: list[int],
                  nowait: bool = False) -> int:
        """Row rows[i] of chunk chunks[i] into out[at[i]] (`out`: a C-contiguous batch buffer).

        The per-row Python work is kept to a dict lookup and a memoryview slice: in a warm epoch
        the loop runs once per image, next to a ~100 us kernel copy. nowait: each read first asks
        the page cache only (RWF_NOWAIT) and goes to the disk for what it lacks; returns how many
        rows were not (wholly) cached."""
        size = self.row_nbytes
        flat = memoryview(out.reshape(-1).view(np.uint8))
        fds, flags, misses = self._fds, RWF_NOWAIT if nowait else 0, 0
        for chunk, row, dst in zip(chunks, rows, at):
            fd = fds.get(chunk)
            if fd is None:
                fd = self._fd(chunk)
                if fd is None:
                    out[dst] = self.arr.fill_value
                    continue
            elif fd < 0:
                out[dst] = self.arr.fill_value
                continue
            view, offset = flat[dst * size:(dst + 1) * size], row * size
            try:
                got = os.preadv(fd, [view], offset, flags) if flags else os.preadv(fd, [view], offset)
            except BlockingIOError:
                got = 0
            if got < size and flags:
                misses += 1
                got += os.preadv(fd, [view[got:]], offset + got)
            if got != size:
                raise OSError(f"{self.path(chunk)}: chunk file ends after {offset + got} bytes, "
                              f"row {row} needs {offset + size} (store damaged?)")
        self.stats["rows"] += len(rows)
        return misses

    def read_chunk(self, chunk: int, out: np.ndarray) -> None:
        """The whole chunk (chunk_rows rows, edge chunks are stored full size) into `out`, which
        must be page-aligned for O_DIRECT (`aligned_empty`)."""
        path = self.path(chunk)
        if path is None:  # compressed or otherwise not raw: through zarr
            start = chunk * self.chunk_rows
            valid = min(self.chunk_rows, self.arr.shape[0] - start)
            out[:valid] = self.arr[start:start + valid]
            return
        if not path.exists():
            out[...] = self.arr.fill_value
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        if self.direct and out.ctypes.data % PAGE == 0:
            try:
                got = self._read_direct(path, view)
                self.stats["direct_chunks"] += 1
                return self._check(path, got)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                log.info("%s: O_DIRECT refused by the file system (EINVAL); buffered reads from now on", path)
                self.direct = False
        with open(path, "rb", buffering=0) as f:
            got = 0
            while got < len(view):  # network and FUSE file systems may return short reads
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        self.stats["buffered_chunks"] += 1
        self._check(path, got)

    @staticmethod
    def _read_direct(path: Path, view: memoryview) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            got = 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], got)
                if n == 0:
                    break
                got += n
            return got
        finally:
            os.close(fd)

    def _check(self, path: Path, got: int) -> None:
        if got != self.chunk_nbytes:
            raise OSError(f"{path}: chunk file has {got} bytes, expected {self.chunk_nbytes} (store damaged?)")


def read_chunk_into(arr: Any, chunk: int, out: np.ndarray) -> None:
    """Fill `out` (the chunk's valid rows) with chunk `chunk` of `arr`, raw read when possible."""
    files = ChunkFiles(arr, direct=False)
    if len(out) == files.chunk_rows:
        files.read_chunk(chunk, out)
        return
    full = np.empty((files.chunk_rows, *out.shape[1:]), dtype=out.dtype)  # edge chunks are stored full size
    files.read_chunk(chunk, full)
    out[...] = full[:len(out)]


# Chunk files kept open per array across windows and epochs (a warm epoch would otherwise open
# every chunk file again); bounded by the open-files limit.
KEEP_OPEN_FILES = 4096
OTHER_OPEN_FILES = 64  # left under the open-files limit for the rest of the process


def keep_handles_open(files: list[ChunkFiles], window_chunks: int, n_chunks: int) -> None:
    """Let each array keep up to KEEP_OPEN_FILES read handles (two windows' at least), raising
    the soft open-files limit as far as the hard one allows."""
    wanted = max(2 * window_chunks, min(n_chunks, KEEP_OPEN_FILES))
    limit = _allow_open_files(wanted * len(files) + OTHER_OPEN_FILES)
    needed = 2 * window_chunks * len(files) + OTHER_OPEN_FILES
    if limit < needed:
        log.warning("the loader may need %d open files, the limit is %d: lower probe.shuffle_window_chunks "
                    "or raise store.chunk_images", needed, limit)
    for f in files:
        f.keep_open = max(2 * window_chunks, min(wanted, (limit - OTHER_OPEN_FILES) // len(files)))


def _allow_open_files(needed: int) -> int:
    """Raise the soft limit on open files to `needed` (up to the hard limit): a large window
    keeps more read handles open than the usual soft limit of 1024. Returns the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new
