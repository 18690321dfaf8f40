"""Chunk-shuffled loader: exact data, full coverage, real randomness, bounded memory, resume."""

import errno
import gc
import math
import weakref

import numpy as np
import pytest
import zarr

from layerprobe.features import loader as loader_mod
from layerprobe.features.chunkfiles import ChunkFiles
from layerprobe.features.loader import (
    BATCH_BUFFERS,
    MARGIN_FRACTION,
    ChunkShuffleLoader,
    LoaderBudgetError,
    chunk_file,
    read_chunk_into,
)

N, TOKENS, DIM, SIDE, CHUNK = 203, 4, 6, 5, 8  # 203: the last chunk is partial


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Features encode their store row, so every batch can be checked against its rows."""
    path = tmp_path_factory.mktemp("loader") / "s.zarr"
    group = zarr.open_group(path, mode="w")
    feats = group.require_array("training/layer_01", shape=(N, TOKENS, DIM), dtype="float16",
                                chunks=(CHUNK, TOKENS, DIM), compressors=None, fill_value=0)
    cls = group.require_array("training/layer_01_cls", shape=(N, DIM), dtype="float16", chunks=(CHUNK, DIM),
                              compressors=None, fill_value=0)
    labels = group.require_array("training/labels", shape=(N, SIDE, SIDE), dtype="uint8",
                                 chunks=(CHUNK, SIDE, SIDE), compressors=None, fill_value=255)
    rows = np.arange(N)
    feats[:] = (rows[:, None, None] + np.zeros((1, TOKENS, DIM))).astype(np.float16)
    cls[:] = (-rows[:, None] + np.zeros((1, DIM))).astype(np.float16)
    labels[:] = (rows % 150)[:, None, None].astype(np.uint8) + np.zeros((1, SIDE, SIDE), np.uint8)
    return group


ROW_BYTES = TOKENS * DIM * 2 + DIM * 2 + SIDE * SIDE


def make(store, budget_rows: float, window: int | None = None, **kw) -> ChunkShuffleLoader:
    """A loader whose budget holds `budget_rows` rows of windows beside the batch buffers; its
    shuffle window is what two of fit (as a budget used to decide), unless given."""
    g, batch = store["training"], kw.pop("batch_size", 16)
    # window rows + the batch buffers, and the loader's margin on top
    budget = math.ceil((budget_rows + BATCH_BUFFERS * batch) * ROW_BYTES / (1 - MARGIN_FRACTION))  # small: a fraction
    window = window or max(1, int(budget_rows // (2 * CHUNK)))
    return ChunkShuffleLoader(g["layer_01"], g["labels"], cls=g["layer_01_cls"], batch_size=batch,
                              ram_budget_bytes=budget, window_chunks=window, seed=kw.pop("seed", 3), **kw)


def collect(loader, skip=0):
    return list(loader.iterate(skip=skip))


def test_raw_chunk_reads_equal_zarr_reads(store, tmp_path):
    arr = store["training/layer_01"]
    assert chunk_file(arr, 0) is not None
    for chunk in (0, 5, N // CHUNK):  # includes the partial edge chunk
        start = chunk * CHUNK
        expected = arr[start:start + CHUNK]
        out = np.empty_like(expected)
        read_chunk_into(arr, chunk, out)
        np.testing.assert_array_equal(out, expected)
    compressed = zarr.open_group(tmp_path / "c.zarr", mode="w").create_array(
        "x", shape=(20, 3), chunks=(8, 3), dtype="float16")
    compressed[:] = np.arange(60).reshape(20, 3)
    assert chunk_file(compressed, 0) is None  # default zstd: read through zarr instead
    out = np.empty((4, 3), np.float16)
    read_chunk_into(compressed, 2, out)
    np.testing.assert_array_equal(out, compressed[16:20])


@pytest.mark.parametrize("budget_rows, mode", [(4 * CHUNK, "chunks"), (10 * N, "resident")])
def test_every_row_once_per_epoch_with_matching_labels(store, budget_rows, mode):
    loader = make(store, budget_rows)
    assert loader.mode == mode
    batches = collect(loader)
    assert len(batches) == len(loader) == -(-N // 16)
    assert all(len(b[3]) == 16 for b in batches[:-1])
    rows = np.concatenate([b[3] for b in batches])
    assert sorted(rows.tolist()) == list(range(N))
    for feats, cls, labels, rows in batches:
        np.testing.assert_array_equal(feats[:, 0, 0].numpy(), rows.astype(np.float16))
        np.testing.assert_array_equal(cls[:, 0].numpy(), (-rows).astype(np.float16))
        np.testing.assert_array_equal(labels[:, 0, 0].numpy(), rows % 150)


def test_epochs_differ_and_are_reproducible(store):
    loader = make(store, 4 * CHUNK)
    first = np.concatenate([b[3] for b in collect(loader)])
    again = np.concatenate([b[3] for b in collect(loader)])
    loader.set_epoch(1)
    second = np.concatenate([b[3] for b in collect(loader)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("budget_rows", [4 * CHUNK, 10 * N])
@pytest.mark.parametrize("skip", [1, 2, 5, 12])
def test_skip_resumes_at_the_same_batch(store, budget_rows, skip):
    loader = make(store, budget_rows)
    loader.set_epoch(2)
    full = collect(loader)
    resumed = collect(loader, skip=skip)
    assert len(resumed) == len(full) - skip
    for a, b in zip(full[skip:], resumed):
        np.testing.assert_array_equal(a[3], b[3])
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_batches_draw_from_many_chunks(store):
    window = 8
    loader = make(store, 2 * window * CHUNK)
    assert loader.window_chunks == window
    spread = [len(set((b[3] // CHUNK).tolist())) for b in collect(loader)[:-1]]
    # 16 rows drawn at random from 8 chunks: about 7 distinct chunks expected; sequential reads give 2-3.
    assert np.mean(spread) >= 5, spread
    ordered = make(store, 2 * window * CHUNK, shuffle=False)
    assert [b[3].tolist() for b in collect(ordered)][0] == list(range(16))


@pytest.mark.parametrize("on_disk", [True, False])
def test_at_most_two_windows_alive(store, monkeypatch, on_disk):
    """Two windows at most (the one batches are drawn from, the next one being read), whether
    chunks are read whole (not in the page cache) or row by row (cached)."""
    alive, peak = set(), [0]
    original = ChunkShuffleLoader._read_window

    def tracked(self, chunks, rng):
        window = original(self, chunks, rng)
        alive.add(id(window))
        weakref.finalize(window, alive.discard, id(window))
        peak[0] = max(peak[0], len(alive))
        return window

    monkeypatch.setattr(ChunkShuffleLoader, "_read_window", tracked)
    monkeypatch.setattr(ChunkFiles, "cached", lambda self, chunk: not on_disk)
    loader = make(store, 4 * CHUNK)
    assert loader.mode == "chunks" and loader.window_chunks == 2
    for _ in loader.iterate():
        gc.collect()
    assert 1 <= peak[0] <= 2
    assert loader.stats["disk_chunks" if on_disk else "cached_chunks"] == loader.n_chunks
    chunk_bytes = loader.row_bytes * CHUNK
    assert 2 * loader.window_chunks * chunk_bytes + BATCH_BUFFERS * 16 * loader.row_bytes <= loader.budget


def test_budget_below_one_window_names_the_config_keys(store):
    with pytest.raises(LoaderBudgetError, match="probe.ram_budget_mb.*probe.shuffle_window_chunks"):
        make(store, 3 * CHUNK, window=4, mode="chunks")
    one = make(store, 4 * CHUNK, window=4, mode="chunks")  # one window fits, two do not: no read-ahead
    assert not one.prefetch and make(store, 8 * CHUNK, window=4, mode="chunks").prefetch


@pytest.mark.parametrize("window", [1, 3, 8, 26, 40])
def test_the_order_is_the_same_whatever_the_budget_and_mode(store, window):
    """The shuffle window, the seed and the chunking decide the order; the budget (read-ahead or
    not) and the mode (resident or chunks) only how bytes arrive. 26 chunks: the whole split."""
    loaders = [make(store, budget, window=window, mode=mode) for budget, mode in
               [(window * CHUNK, "chunks"), (2 * window * CHUNK, "chunks"), (10 * N, "chunks"), (N, "resident"),
                (0, "resident")]]
    assert {loader.prefetch for loader in loaders[:2]} == {False, True}
    for epoch in (0, 3):
        orders = []
        for loader in loaders:
            loader.set_epoch(epoch)
            batches = collect(loader)
            rows = np.concatenate([b[3] for b in batches])
            np.testing.assert_array_equal(rows, loader.order())
            for feats, _, _, r in batches:
                np.testing.assert_array_equal(feats[:, 0, 0].numpy(), r.astype(np.float16))
            orders.append(rows)
        for other in orders[1:]:
            np.testing.assert_array_equal(orders[0], other)
    if window >= 26:  # one window of every chunk: a full permutation, not the stored order
        assert sorted(orders[0].tolist()) == list(range(N)) and not np.array_equal(orders[0], np.arange(N))


def test_damaged_chunk_file_is_reported_with_the_store(store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.store.root, copy)
    group = zarr.open_group(copy, mode="r")
    chunk = chunk_file(group["training/layer_01"], 3)
    chunk.write_bytes(chunk.read_bytes()[:10])
    g = group["training"]
    bad = ChunkShuffleLoader(g["layer_01"], g["labels"], batch_size=16, ram_budget_bytes=2**20, seed=0, mode="chunks",
                             shuffle=False)
    with pytest.raises(RuntimeError, match=r"layer_01.*chunk file (has 10 bytes|ends after 10 bytes).*store damaged"):
        collect(bad)


def test_missing_chunk_reads_as_fill_value(tmp_path):
    group = zarr.open_group(tmp_path / "f.zarr", mode="w")
    labels = group.require_array("labels", shape=(16, 2, 2), dtype="uint8", chunks=(8, 2, 2), compressors=None,
                                 fill_value=255)
    labels[8:] = 1  # chunk 0 stays all fill value: zarr writes no file for it
    assert not chunk_file(labels, 0).exists()
    out = np.zeros((8, 2, 2), np.uint8)
    loader_mod.read_chunk_into(labels, 0, out)
    assert (out == 255).all()
    # Through the loader's page-cache path, epoch after epoch (the handle cache remembers the
    # missing file).
    feats = group.require_array("feats", shape=(16, 2, 2), dtype="float16", chunks=(8, 2, 2), compressors=None,
                                fill_value=0)
    feats[8:] = 1
    loader = ChunkShuffleLoader(feats, labels, batch_size=4, ram_budget_bytes=2**16, mode="chunks")
    for epoch in range(3):
        loader.set_epoch(epoch)
        for f, _, lab, rows in loader.iterate():
            assert ((f.numpy() == 0) == (rows < 8)[:, None, None]).all()
            assert ((lab.numpy() == 255) == (rows < 8)[:, None, None]).all()


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Chunk files whose sizes are multiples of the 4 KiB page (features and labels; the CLS
    arrays' 2 KiB chunks are not): the sizes O_DIRECT accepts."""
    n, tokens, dim, side = 60, 16, 128, 32
    group = zarr.open_group(tmp_path_factory.mktemp("aligned") / "a.zarr", mode="w")
    feats = group.require_array("f", shape=(n, tokens, dim), dtype="float16", chunks=(CHUNK, tokens, dim),
                                compressors=None, fill_value=0)
    cls = group.require_array("c", shape=(n, dim), dtype="float16", chunks=(CHUNK, dim), compressors=None,
                              fill_value=0)
    labels = group.require_array("l", shape=(n, side, side), dtype="uint8", chunks=(CHUNK, side, side),
                                 compressors=None, fill_value=255)
    rows = np.arange(n)
    feats[:] = (rows[:, None, None] + np.zeros((1, tokens, dim))).astype(np.float16)
    cls[:] = (-rows[:, None] + np.zeros((1, dim))).astype(np.float16)
    labels[:] = rows[:, None, None].astype(np.uint8) + np.zeros((1, side, side), np.uint8)
    return group


def _check_batches(batches, n):
    rows = np.concatenate([b[3] for b in batches])
    assert sorted(rows.tolist()) == list(range(n))
    for feats, cls, labels, r in batches:
        np.testing.assert_array_equal(feats[:, -1, -1].numpy(), r.astype(np.float16))
        np.testing.assert_array_equal(cls[:, -1].numpy(), (-r).astype(np.float16))
        np.testing.assert_array_equal(labels[:, -1, -1].numpy(), r.astype(np.uint8))


@pytest.mark.parametrize("case", ["direct", "einval", "cached", "mixed"])
def test_disk_and_cache_paths_give_identical_batches(aligned, monkeypatch, case, caplog):
    """O_DIRECT whole-chunk reads, their buffered fallback when the file system refuses O_DIRECT
    (EINVAL), row reads from the page cache, and a mix: the same batches in the same order."""
    def loader():
        return ChunkShuffleLoader(aligned["f"], aligned["l"], cls=aligned["c"], batch_size=8, seed=1, window_chunks=4,
                                  ram_budget_bytes=10 * CHUNK * (16 * 128 * 2 + 32 * 32 + 256), mode="chunks")

    reference = [tuple(x.clone() if hasattr(x, "clone") else x for x in b) for b in loader().iterate()]
    cached = {"direct": False, "einval": False, "cached": True}.get(case)
    monkeypatch.setattr(ChunkFiles, "cached", lambda self, chunk: chunk % 2 == 0 if cached is None else cached)
    if case == "einval":
        def refuse(path, view):
            raise OSError(errno.EINVAL, "Invalid argument")
        monkeypatch.setattr(ChunkFiles, "_read_direct", staticmethod(refuse))
    test = loader()
    with caplog.at_level("INFO", logger="layerprobe.loader"):
        batches = list(test.iterate())
    _check_batches(batches, 60)
    for a, b in zip(reference, batches):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    feats, labels, cls = test.files
    if case == "direct":
        assert feats.direct and labels.direct and not cls.direct  # 2 KiB CLS chunks are not page multiples
        assert feats.stats["direct_chunks"] == labels.stats["direct_chunks"] == 8 and cls.stats["buffered_chunks"] == 8
    if case == "einval":
        assert "O_DIRECT refused by the file system (EINVAL)" in caplog.text and not feats.direct
        assert feats.stats["buffered_chunks"] == 8
    if case == "cached":
        assert test.stats == {"cached_chunks": 8, "disk_chunks": 0, "uncached_rows": 0} and feats.stats["rows"] == 60


def test_order_without_io_is_the_order_batches_take(store):
    loader = make(store, 4 * CHUNK)
    loader.set_epoch(4)
    np.testing.assert_array_equal(loader.order(), np.concatenate([b[3] for b in collect(loader)]))


def test_rows_missing_from_the_page_cache_are_read_from_disk_and_probing_resumes(aligned, monkeypatch):
    """After a window that came from the page cache, rows are read with RWF_NOWAIT; one that the
    cache lacks (EAGAIN) is read from the disk all the same, and the next window is probed."""
    import os as os_mod

    real = os_mod.preadv
    calls = {"nowait": 0}

    def flaky(fd, buffers, offset, flags=0):
        if flags & os_mod.RWF_NOWAIT:
            calls["nowait"] += 1
            if calls["nowait"] % 7 == 0:
                raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(ChunkFiles, "cached", lambda self, chunk: True)
    monkeypatch.setattr(os_mod, "preadv", flaky)
    test = ChunkShuffleLoader(aligned["f"], aligned["l"], cls=aligned["c"], batch_size=8, seed=1, window_chunks=4,
                              ram_budget_bytes=10 * CHUNK * (16 * 128 * 2 + 32 * 32 + 256), mode="chunks")
    _check_batches(list(test.iterate()), 60)
    assert test.stats["uncached_rows"] >= 1 and calls["nowait"] > 0


def test_leaving_mid_epoch_stops_reading_and_close_closes_every_file(store, monkeypatch):
    """A consumer that stops (a signal, an error) in the middle of a large window: the producer
    stops after the batch it was building; read handles stay open for the next epoch until
    `close()` closes every one, the prefetched window's included (probed chunks open their files)."""
    original = ChunkShuffleLoader._read_window

    def always_probe(self, chunks, rng):
        self._warm = False  # probe every window, as after a cache miss
        return original(self, chunks, rng)

    monkeypatch.setattr(ChunkShuffleLoader, "_read_window", always_probe)
    loader = make(store, 8 * CHUNK, batch_size=2)
    assert loader.window_chunks >= 4
    batches = loader.iterate(skip=3 * CHUNK // 2)  # the first batch of the third window (4 chunks)
    next(batches)
    batches.close()
    # The batch taken, one queued, one being built, at most one more: not the window's 4 chunks.
    assert loader.files[0].stats["rows"] <= 4 * 2 < 4 * CHUNK
    assert any(f._fds for f in loader.files)
    loader.close()
    assert all(not f._fds for f in loader.files)


def test_open_read_handles_are_bounded_by_keep_open(store):
    """Handles are kept across windows and epochs, but never more than keep_open per array once
    a window is dropped (the oldest are closed first)."""
    loader = make(store, 2 * CHUNK, batch_size=4)
    for f in loader.files:
        f.keep_open = 3
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader.iterate())
        rows = np.concatenate([b[3] for b in batches])
        assert sorted(rows.tolist()) == list(range(N))
        for feats, _, labels, r in batches:  # read from the right files while handles come and go
            np.testing.assert_array_equal(feats[:, -1, -1].numpy(), r.astype(np.float16))
            np.testing.assert_array_equal(labels[:, -1, -1].numpy(), (r % 150).astype(np.uint8))
        assert all(len(f._fds) <= 3 for f in loader.files)
    loader.close()
