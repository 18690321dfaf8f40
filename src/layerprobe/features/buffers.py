"""Memory the loader reads into: windows of rows, and pooled page-aligned buffers reused once free."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .chunkfiles import aligned_empty


@dataclass
class Window:
    """Rows available for batches: the split (resident), or a few chunks of it (chunks mode).

    Chunks mode: `buffers[k][chunk]` is a chunk read from disk for array k (feats, labels, cls),
    absent for a chunk the page cache holds (its rows are read straight into the batch).
    """

    feats: Any
    cls: Any
    labels: Any
    rows: np.ndarray  # store row of each window row
    order: np.ndarray  # window-row indices in consumption order
    buffers: list[dict[int, np.ndarray]] = field(default_factory=list)
    # Chunks mode, in consumption order: store rows, and their chunk and row in it (as lists:
    # the row reads index them per row, once per window rather than per batch).
    sequence: np.ndarray | None = None
    chunk_of: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)


class BufferPool:
    """Reuses a few large arrays once nobody references them any more.

    Why: fresh multi-MB arrays come from mmap, and first-touch page faults cost as much as the
    copy itself. A buffer is handed out again only when the reference count of the memory's
    owner shows that no view of it (and no tensor made from it) is alive, so reuse can never
    overwrite data in use. Buffers are page-aligned (O_DIRECT reads into them); every view's
    `base` is then the owner of the memory, which is what is counted.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffers: list[list[Any]] = []  # [array, memory owner, the owner's refcount when idle]
        self.lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype: Any, rows: int) -> np.ndarray:
        """A view of `rows` leading rows of a free buffer of `shape`, or a new one."""
        with self.lock:
            for buffer, owner, idle in self.buffers:
                if buffer.shape == shape and buffer.dtype == dtype and sys.getrefcount(owner) == idle:
                    return buffer[:rows]
            buffer = aligned_empty(shape, dtype)
            if len(self.buffers) < self.size:
                owner = buffer.base if buffer.base is not None else buffer
                entry = [buffer, owner, 0]
                self.buffers.append(entry)
                # Counted as in the loop above: the entry, buffer.base, a local, the argument.
                entry[2] = sys.getrefcount(owner)
            return buffer[:rows]
