"""Shared fixtures: the repo root, a tiny model/data set, and one demo run reused by many tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# `make test` runs two pytest-xdist workers (--dist loadscope with the scheduler below): the SLURM
# tests mostly wait on the scheduler's clock while the demo and the other Snakemake runs keep the
# cores busy. A session fixture is made once per worker, so the modules sharing one form one
# scope (WORKER_GROUPS); every other module is its own scope (module fixtures). Scopes go out in
# the order sorted here, longest first: LONGEST (minutes of end-to-end runs each), then modules
# with end-to-end runs (`slow`), then the quick ones, so that no long scope starts last. (xdist's
# own --dist loadgroup renames node ids, which pytest 9 no longer lets it do: its groups were ignored.)
WORKER_GROUPS = {
    "slurm": ("tests/test_slurm.py", "tests/test_submit_head.py", "tests/test_slurm_billing.py"),
    "demo": ("tests/test_browser.py", "tests/test_plan.py", "tests/test_report.py", "tests/test_smoke.py",
             "tests/test_workflow_demo.py"),
}
SHARED_FIXTURES = {"slurm": "slurm", "demo_run": "demo", "demo_results": "demo"}  # fixture -> its group
LONGEST = ("tests/test_edit_matrix.py", "slurm", "demo")  # the edit matrix is CPU-bound, SLURM mostly waits


def scope_of(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return next((group for group, paths in WORKER_GROUPS.items() if path in paths), path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return SharedFixtureScopes(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = sorted({f"{item.nodeid.split('::')[0]} (fixture {name})" for item in items
                        for name in item.fixturenames
                        if name in SHARED_FIXTURES and scope_of(item.nodeid) != SHARED_FIXTURES[name]})
    if misplaced:  # it would run its session fixture a second time, on another worker
        raise pytest.UsageError(f"add to tests/conftest.py WORKER_GROUPS: {', '.join(misplaced)}")
    slow = {scope_of(item.nodeid) for item in items if item.get_closest_marker("slow")}
    def rank(item: pytest.Item) -> int:
        scope = scope_of(item.nodeid)
        return LONGEST.index(scope) if scope in LONGEST else len(LONGEST) + (scope not in slow)

    items.sort(key=rank)  # stable: the order within a rank is pytest's


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config run end to end once (local profile, 2 cores); many tests read its results."""
    workdir = copy_repo(tmp_path_factory.mktemp("demo"))
    snakemake(workdir, "--profile", "profiles/local", "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def demo_results(demo_run: Path) -> Path:
    return demo_run
