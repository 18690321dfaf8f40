"""Fault injection on extraction: SIGKILL at any moment, disk full. Resumes are byte-identical."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from layerprobe import store
from layerprobe.extract import ChunkWriter, make_layout, run_part
from tests.helpers import tiny_feature_store
from tests.test_extract import _store_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    model, backbone, data, reference = tiny_feature_store(tmp, training=40, validation=8)
    return tmp, model, backbone, data, reference


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.helpers import tiny_backbone, tiny_data
    from layerprobe.data import open_data
    from layerprobe.extract import run_part
    from pathlib import Path
    tmp = Path({tmp!r})
    model, backbone = tiny_backbone(tmp)
    original = backbone.extract
    def slow(*a, **k):
        time.sleep(0.15)  # widen the window so the kill lands mid-run
        return original(*a, **k)
    backbone.extract = slow
    run_part("tiny", model, "none", backbone, open_data(tmp / "32px.zarr"), Path({out!r}), 0, 1, 4, 0)
""")


@pytest.mark.parametrize("kill_after_chunks", [1, 5])
def test_sigkill_then_rerun_redoes_only_unfinished_chunks(setup, tmp_path, kill_after_chunks):
    tmp, model, backbone, data, reference = setup
    out = tmp_path / "killed.zarr"
    script = SCRIPT.format(root=str(ROOT), tmp=str(tmp), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = list((out / ".progress").rglob("*.json")) if out.exists() else []
        if len(done) >= kill_after_chunks:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    layout = make_layout("tiny", model, "none", data, 4, 0)
    missing = store.missing_chunks(out, layout)
    assert 0 < len(missing) < len(layout.all_chunks())
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(out, tmp_path / "killed.json")
    stats = run_part("tiny", model, "none", backbone, data, out, 0, 1, 4, 0)
    assert stats["chunks"] == len(missing)
    store.finalize(out, tmp_path / "killed.json")
    assert _store_bytes(out) == _store_bytes(reference)


def test_disk_full_names_store_is_not_finalized_and_resumes(setup, tmp_path, monkeypatch):
    tmp, model, backbone, data, reference = setup
    out = tmp_path / "full.zarr"
    original = ChunkWriter._write
    calls = {"n": 0}

    def full_disk(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(ChunkWriter, "_write", full_disk)
    with pytest.raises(RuntimeError) as err:
        run_part("tiny", model, "none", backbone, data, out, 0, 1, 4, 0)
    assert str(out) in str(err.value) and "No space left on device" in str(err.value)
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(out, tmp_path / "full.json")
    assert not (tmp_path / "full.json").exists()
    monkeypatch.setattr(ChunkWriter, "_write", original)
    run_part("tiny", model, "none", backbone, data, out, 0, 1, 4, 0)
    store.finalize(out, tmp_path / "full.json")
    assert _store_bytes(out) == _store_bytes(reference)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_real_full_tmpfs(setup, tmp_path):
    """A genuinely full file system (3 MB tmpfs), not a simulated error."""
    tmp, model, backbone, data, reference = setup
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        out = mnt / "store.zarr"
        with pytest.raises(Exception) as err:
            run_part("tiny", model, "none", backbone, data, out, 0, 1, 4, 0)
        assert "No space left on device" in repr(err.value) or "ENOSPC" in repr(err.value) or "Errno 28" in repr(err.value)
        with pytest.raises(Exception):
            store.finalize(out, mnt / "m.json")
        assert not (mnt / "m.json").exists()
    finally:
        subprocess.run(["umount", str(mnt)])
