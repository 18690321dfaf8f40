"""Fault injection on extraction: SIGKILL at any moment (also mid-extension), disk full. Resumes are
byte-identical."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from layerprobe.features import markers, store
from layerprobe.features.extract import ChunkWriter, build_store, extract_part
from tests.helpers import KEYS, tiny_config, tiny_feature_store, tiny_layout
from tests.test_extract import _chunk_files, _store_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    model, backbone, data, reference = tiny_feature_store(tmp, training=40, validation=8)
    layout = tiny_layout(tiny_config(tmp, 40, 8), data)
    return tmp, model, backbone, data, reference, layout


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.helpers import tiny_backbone, tiny_config, tiny_layout
    from layerprobe.features import store
    from layerprobe.data.preprocess import open_data
    from layerprobe.features.extract import extract_part
    from pathlib import Path
    tmp = Path({tmp!r})
    model, backbone = tiny_backbone(tmp)
    original = backbone.extract
    def slow(*a, **k):
        time.sleep(0.15)  # widen the window so the kill lands mid-run
        return original(*a, **k)
    backbone.extract = slow
    data = open_data(tmp / "32px.zarr")
    layout = tiny_layout(tiny_config(tmp, 40, 8), data)
    store.prepare(Path({out!r}), layout, {keys!r})
    extract_part(backbone, data, Path({out!r}), layout, {keys!r}, 0, 1, 4)
""")


def _run_and_kill(tmp: Path, out: Path, keys: list[str], marked: Callable[[], int], after: int) -> None:
    """Start an extraction in a subprocess and SIGKILL it once `marked()` reaches `after`."""
    script = SCRIPT.format(root=str(ROOT), tmp=str(tmp), out=str(out), keys=keys)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if marked() >= after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kill_after_chunks", [1, 11])
def test_sigkill_then_rerun_redoes_only_unfinished_chunks(setup, tmp_path, kill_after_chunks):
    tmp, model, backbone, data, reference, layout = setup
    out = tmp_path / "killed.zarr"
    _run_and_kill(tmp, out, KEYS, lambda: len(list((out / ".progress").rglob("*.json"))) if out.exists() else 0,
                  kill_after_chunks)
    missing = markers.missing_work(out, layout.all_chunks(), KEYS)
    assert 0 < len(missing) < len(layout.all_chunks())
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(out, tmp_path / "killed.json", KEYS)
    stats = extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
    assert stats["chunks"] == len(missing)
    store.finalize(out, tmp_path / "killed.json", KEYS)
    assert _store_bytes(out) == _store_bytes(reference)


def test_sigkill_in_the_middle_of_an_extension(setup, tmp_path):
    """A store with layers 0 and 4 is extended with 1-3 and killed after a few chunks: the rerun
    writes exactly the (chunk, layer) pairs left, never touches layers 0 and 4, and the store
    equals one built with every layer at once."""
    tmp, model, backbone, data, reference, layout = setup
    out = tmp_path / "grow.zarr"
    build_store(backbone, data, out, tmp_path / "grow.json", layout, ["layer_00", "layer_04"], 4)
    old = {k: _chunk_files(out, k) for k in ("layer_00", "layer_04", "labels")}

    def extended() -> int:
        return sum("layer_02" in markers.chunk_layers(out, s, c) for s, c in layout.all_chunks())

    _run_and_kill(tmp, out, KEYS, extended, 3)
    left = markers.missing_work(out, layout.all_chunks(), KEYS)
    assert 0 < len(left) < len(layout.all_chunks())
    assert all(sorted(missing) == ["layer_01", "layer_02", "layer_03"] for _, _, missing in left)
    stats = extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
    assert stats["chunks"] == len(left) and stats["pairs"] == 3 * len(left)
    store.finalize(out, tmp_path / "grow.json", KEYS)
    assert {k: _chunk_files(out, k) for k in old} == old
    assert _store_bytes(out) == _store_bytes(reference)


def test_disk_full_names_store_is_not_finalized_and_resumes(setup, tmp_path, monkeypatch):
    tmp, model, backbone, data, reference, layout = setup
    out = tmp_path / "full.zarr"
    original = ChunkWriter._write
    calls = {"n": 0}

    def full_disk(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(ChunkWriter, "_write", full_disk)
    store.prepare(out, layout, KEYS)
    with pytest.raises(RuntimeError) as err:
        extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
    assert str(out) in str(err.value) and "No space left on device" in str(err.value)
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(out, tmp_path / "full.json", KEYS)
    assert not (tmp_path / "full.json").exists()
    monkeypatch.setattr(ChunkWriter, "_write", original)
    extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
    store.finalize(out, tmp_path / "full.json", KEYS)
    assert _store_bytes(out) == _store_bytes(reference)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_real_full_tmpfs(setup, tmp_path):
    """A genuinely full file system (3 MB tmpfs), not a simulated error."""
    tmp, model, backbone, data, reference, layout = setup
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        out = mnt / "store.zarr"
        store.prepare(out, layout, KEYS)  # metadata fits; the chunks do not
        with pytest.raises(RuntimeError, match=f"{out}: writing failed") as err:
            extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
        assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
        with pytest.raises(RuntimeError, match="incomplete store"):
            store.finalize(out, mnt / "m.json", KEYS)
        assert not (mnt / "m.json").exists() and not list(out.rglob("*.partial"))
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_killed_writers_temporary_files_are_removed_and_never_counted(setup, tmp_path):
    """What a SIGKILL leaves mid-write (a chunk file's `.partial`, a marker's `.tmp`): the part
    that redoes the chunk removes its orphans before writing it, finalize sweeps the rest, and
    neither the store's bytes nor the manifest's byte count include them."""
    tmp, model, backbone, data, reference, layout = setup
    out = tmp_path / "orphans.zarr"
    store.prepare(out, layout, KEYS)
    chunk_dir = out / "training" / "layer_02" / "c" / "3" / "0"
    redone = chunk_dir / ".0.deadbeef.partial"  # chunk 3 has no marker: the part rewrites it
    redone.write_bytes(b"x" * 1000)
    marker_tmp = markers.marker(out, "validation", 1).with_name("000001.json.cafe.tmp")
    marker_tmp.parent.mkdir(parents=True, exist_ok=True)
    marker_tmp.write_text("{")
    extract_part(backbone, data, out, layout, KEYS, 0, 1, 4)
    assert not redone.exists() and not marker_tmp.exists()
    late = out / "validation" / "labels" / "c" / "0" / "0" / ".0.0badf00d.partial"  # a finished chunk's
    late.write_bytes(b"y" * 100)
    assert store.disk_bytes(out) == sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) - 100
    manifest = store.finalize(out, tmp_path / "orphans.json", KEYS)
    assert not late.exists() and manifest["bytes"] == store.disk_bytes(out)
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    assert _store_bytes(out) == _store_bytes(reference)


def test_a_part_refuses_chunks_of_another_precision(setup, tmp_path):
    """dtype auto is fp16 on a GPU and fp32 on a CPU: a part on another kind of node than the
    store's other chunks refuses, naming the store and both precisions; the manifest records it."""
    tmp, model, backbone, data, reference, layout = setup
    out = tmp_path / "mixed.zarr"
    store.prepare(out, layout, KEYS)
    cpu, gpu = {"dtype": "float32", "device": "cpu"}, {"dtype": "float16", "device": "cuda"}
    extract_part(backbone, data, out, layout, KEYS, 0, 2, 4, precision=cpu)
    with pytest.raises(markers.PrecisionMismatch, match=rf"{out}.*float32 on cpu.*float16 on cuda"):
        extract_part(backbone, data, out, layout, KEYS, 1, 2, 4, precision=gpu)
    extract_part(backbone, data, out, layout, KEYS, 1, 2, 4, precision=cpu)
    assert store.finalize(out, tmp_path / "mixed.json", KEYS)["precision"] == cpu
    # two parts that started at once on different nodes: finalize refuses the store
    info = markers.read_marker(out, "training", 0)
    markers.write_marker(out, "training", 0, {**info, **gpu})
    with pytest.raises(markers.PrecisionMismatch, match="different precisions"):
        store.finalize(out, tmp_path / "mixed.json", KEYS)
