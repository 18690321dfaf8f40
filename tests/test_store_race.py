"""Parallel parts started at the same instant (a barrier, no stagger) on a fresh, a stale and an
extended store: every round succeeds with no retry, and the store equals a one-part store.

Before stores were prepared in their own job, two parts starting within 80 ms crashed in 17 of
18 rounds (concurrent `require_array`, concurrent `rmtree` of a stale store)."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import traceback
from pathlib import Path

import pytest

from layerprobe.features import store
from layerprobe.features.extract import build_store
from tests.helpers import KEYS, tiny_config, tiny_data, tiny_layout
from tests.test_extract import _store_bytes

PARTS = 3
ROUNDS = 10


def _worker(tmp: str, part: int, barrier, jobs, results) -> None:  # noqa: ANN001 - mp primitives
    """One part per round: load once, then wait for the barrier and write this part's chunks."""
    try:
        from layerprobe.data.preprocess import open_data
        from layerprobe.features.extract import extract_part
        from layerprobe.models.backbones import load_backbone

        cfg = tiny_config(Path(tmp))
        backbone = load_backbone("tiny", cfg["models"]["tiny"], "cpu")
        data = open_data(Path(tmp) / "32px.zarr")
        layout = tiny_layout(cfg, data)
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((part, "setup", traceback.format_exc()))
        return
    while (job := jobs.get()) is not None:
        path, keys = job
        try:
            barrier.wait(timeout=60)
            stats = extract_part(backbone, data, path, layout, keys, part, PARTS, 4)
            results.put((part, "ok", stats["chunks"]))
        except BaseException:  # noqa: BLE001 - reported to the parent
            results.put((part, "error", traceback.format_exc()))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("race")
    cfg = tiny_config(tmp)
    data = tiny_data(tmp)
    layout = tiny_layout(cfg, data)
    from layerprobe.models.backbones import load_backbone

    backbone = load_backbone("tiny", cfg["models"]["tiny"], "cpu")
    reference = tmp / "one_part.zarr"
    build_store(backbone, data, reference, tmp / "one_part.json", layout, KEYS, 4)
    stale = tmp / "stale.zarr"  # the same layers under another fingerprint (another batch size)
    build_store(backbone, data, stale, tmp / "stale.json", tiny_layout(tiny_config(tmp / "b2", batch_size=2), data),
                KEYS, 2)
    shallow = tmp / "shallow.zarr"  # to be extended with layers 1-3
    build_store(backbone, data, shallow, tmp / "shallow.json", layout, ["layer_00", "layer_04"], 4)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PARTS), ctx.Queue()
    jobs = [ctx.Queue() for _ in range(PARTS)]
    workers = [ctx.Process(target=_worker, args=(str(tmp), p, barrier, jobs[p], results), daemon=True)
               for p in range(PARTS)]
    for w in workers:
        w.start()
    yield {"tmp": tmp, "layout": layout, "reference": reference, "stale": stale, "shallow": shallow,
           "jobs": jobs, "results": results}
    for q in jobs:
        q.put(None)
    for w in workers:
        w.join(timeout=30)


def _round(pool: dict, path: Path) -> list[tuple[int, str, object]]:
    """prepare once, then every part at the same instant."""
    store.prepare(path, pool["layout"], KEYS)
    for q in pool["jobs"]:
        q.put((path, KEYS))
    return sorted(pool["results"].get(timeout=120) for _ in range(PARTS))


@pytest.mark.parametrize("start", ["fresh", "stale", "extended"])
def test_parts_at_the_same_instant_never_fail(pool, tmp_path, start):
    expected = _store_bytes(pool["reference"])
    for i in range(ROUNDS):
        path = tmp_path / f"{start}_{i}.zarr"
        if start == "stale":
            shutil.copytree(pool["stale"], path)
        elif start == "extended":
            shutil.copytree(pool["shallow"], path)
        outcome = _round(pool, path)
        failures = [r for r in outcome if r[1] != "ok"]
        assert not failures, f"round {i}: {failures}"
        assert sum(r[2] for r in outcome) == 7  # every chunk written (or extended) exactly once
        store.finalize(path, tmp_path / f"{start}_{i}.json", KEYS)
        assert _store_bytes(path) == expected, f"round {i}"
        shutil.rmtree(path)
