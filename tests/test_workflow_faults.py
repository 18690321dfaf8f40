"""A SIGKILL of the whole Snakemake process group mid-extraction, as a user hits it (a node lost,
`kill -9`, an OOM killer): after `--unlock` and the same command, the store is byte-identical to
an uninterrupted run's, holds no writer's temporary file, and its manifest is equal.

The store here is built for the kill to land mid-write: a wide ViT's embeddings only (a cheap
forward), so writing multi-MB chunk files is most of each chunk's time. Three kill points, drawn
at random (seeded), by how many chunks are marked done."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, copy_repo, snakemake

pytestmark = pytest.mark.slow
CONFIG = {
    "dataset": {"root": "results/demo/ADEChallengeData2016",
                "synthetic": {"seed": 0, "training": 96, "validation": 32, "height": 64, "width": 64, "classes": 6}},
    "store": {"chunk_images": 16, "parts": 2},  # 8 MB chunk files: writing is most of a chunk's time
    "models": {"wide_vit": {"kind": "open_clip", "arch": "lp-kill-vit", "pretrained": "results/models/wide_vit.pt",
                            "tiny": {"image_size": 64, "patch_size": 4, "width": 1024, "layers": 1, "heads": 8,
                                     "seed": 0},
                            "layers": [0], "batch_size": 4}},
    "probe": {"ram_budget_mb": 1024},
}
STORE, MANIFEST = "results/features/wide_vit/none.zarr", "results/features/wide_vit/none.manifest.json"
RUN = ("--profile", "profiles/local", "--configfile", "kill.yaml")  # the user's command


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and p.name.endswith((".partial", ".tmp"))]


def _kill_after(workdir: Path, marked: int) -> int:
    """Run the store's jobs; SIGKILL Snakemake's whole process group once `marked` chunks are
    done. Returns the temporary files the kill left."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(BIN / "snakemake"), MANIFEST, *RUN],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    progress = workdir / STORE / ".progress"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if progress.is_dir() and sum(1 for _ in progress.glob("*/*.json")) >= marked:
            break
        time.sleep(0.001)
    assert proc.poll() is None, f"the extraction ended before {marked} chunks were marked"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the group's last processes gone
    return len(_temporaries(workdir / STORE))


def test_sigkill_of_snakemake_mid_extraction_resumes_to_the_uninterrupted_store(tmp_path):
    killed = copy_repo(tmp_path / "killed")
    (killed / "kill.yaml").write_text(yaml.safe_dump(CONFIG))
    snakemake(killed, "results/data/64px.json", "results/models/wide_vit.built", *RUN)  # the kills land in extraction
    reference = tmp_path / "reference"
    shutil.copytree(killed, reference, symlinks=True)
    snakemake(reference, MANIFEST, *RUN)
    chunks = sum(1 for _ in (reference / STORE / ".progress").glob("*/*.json"))
    rng = random.Random(20)  # one point in each third of the chunks
    points = [rng.randrange(1 + i * chunks // 3, (i + 1) * chunks // 3) for i in range(3)]
    left = []
    for point in points:
        left.append(_kill_after(killed, point))
        snakemake(killed, "--unlock", "--configfile", "kill.yaml")
    snakemake(killed, MANIFEST, *RUN)
    print(f"kills after {points} of {chunks} chunks marked left {left} temporary files")
    store = killed / STORE
    assert not _temporaries(store)
    assert _files(store) == _files(reference / STORE)
    assert json.loads((killed / MANIFEST).read_text()) == json.loads((reference / MANIFEST).read_text())
