"""Shared fixtures: the repo root, a tiny model/data set, and one demo run reused by many tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["Snakefile", "workflow", "config", "profiles", "envs", "src", "pyproject.toml"]


def copy_repo(dest: Path) -> Path:
    """A clean working copy of the workflow (no results/) for an isolated Snakemake run."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 1200, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


# `make test` runs two pytest-xdist workers (--dist loadgroup): the SLURM tests mostly wait on the
# scheduler's clock while the demo and the other Snakemake runs keep the cores busy. A session
# fixture is made once per worker, so the tests sharing one run on one worker, as do the tests of a
# module (module fixtures); the two long groups start first.
SHARED_GROUPS = {"slurm": "slurm", "demo_run": "demo", "demo_results": "demo"}  # fixture -> group


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = list(dict.fromkeys(SHARED_GROUPS.values()))
    for item in items:
        shared = [SHARED_GROUPS[name] for name in item.fixturenames if name in SHARED_GROUPS]
        item.add_marker(pytest.mark.xdist_group(shared[0] if shared else item.nodeid.split("::")[0]))
    items.sort(key=lambda item: next((i for i, g in enumerate(order) if group_of(item) == g), len(order)))


def group_of(item: pytest.Item) -> str:
    return next(item.iter_markers("xdist_group")).args[0]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config run end to end once (local profile, 2 cores); many tests read its results."""
    workdir = copy_repo(tmp_path_factory.mktemp("demo"))
    snakemake(workdir, "--profile", "profiles/local", "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def demo_results(demo_run: Path) -> Path:
    return demo_run
