"""The SLURM profile on a real slurmctld (tests/slurm/start_local_slurm.sh): one Snakemake run of a
demo subset with `--profile profiles/slurm`, then

- every job went through SLURM with the resources layerprobe/resources.py and the profile ask for
  (memory, time limit, CPUs, partition), read back from slurmctld with `scontrol show job`;
- the probe's first attempt gets a 1-minute limit, is killed by SLURM (TIMEOUT), is retried with
  more time by Snakemake, resumes from its checkpoint, and ends with the same epochs.csv,
  metrics.json and predictions.npz as an uninterrupted local run of the same probe.

One run serves both tests (5-8 minutes on 2 cores: the shortest SLURM time limit is 1 minute,
slurmctld enforces limits every 30 s, and the executor plugin polls less often the longer a job
runs). The uninterrupted reference runs locally, in a copy of the workflow, while the SLURM probe
runs.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from layerprobe import config as lp_config
from layerprobe import resources as lp_resources
from tests.conftest import ROOT, copy_repo, snakemake
from tests.slurm_cluster import memory_mb, minutes, portable_profile_args, slurm  # noqa: F401  (the fixture)

CONFIGS = ["config/demo.yaml", "config/slurm_test.yaml"]
MODEL, PROMPT, LAYER = "tiny_vit", "none", "layer_02"
PROBE_DIR = f"results/demo/probes/{MODEL}/{PROMPT}/{LAYER}"
TARGET = f"{PROBE_DIR}/metrics.json"
STORE_MANIFEST = f"results/demo/features/{MODEL}/{PROMPT}.manifest.json"
PROBE_LOG = f"results/demo/logs/probe/{MODEL}/{PROMPT}/{LAYER}.log"
FIRST_LIMIT_MIN, RETRY_LIMIT_MIN = 1, 10
# Short status polling for a test; successful jobs keep their SLURM logs so job ids can be read back.
FAST = ["--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2", "--slurm-keep-successful-logs"]
EXPECTED_JOBS = {"synthetic_dataset": 1, "preprocess": 1, "build_tiny_model": 1, "prepare_store": 1, "extract": 2,
                 "finalize_store": 1, "probe": 2}  # probe_fingerprint is a localrule: it runs beside the controller


def profile() -> dict:
    return yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())


def resource_args() -> list[str]:
    """The profile's resources (without partition/account, which the test cluster lacks) plus a
    1-minute first attempt for the probe."""
    return portable_profile_args(ROOT / "profiles/slurm/config.yaml",
                                 (f"probe:runtime={FIRST_LIMIT_MIN} if attempt == 1 else {RETRY_LIMIT_MIN}",))


def profile_value(prof: dict, rule: str, name: str, attempt: int, default: int) -> int:
    """A resource the profile sets for a rule (a number or an expression of `attempt`), else `default`."""
    value = ((prof.get("set-resources") or {}).get(rule) or {}).get(name)
    if value is None:
        return default
    return int(eval(str(value), {"attempt": attempt})) if isinstance(value, str) else int(value)


def merged_config(workdir: Path) -> dict:
    config: dict = {}
    for name in CONFIGS:
        _deep_update(config, yaml.safe_load((workdir / name).read_text()))
    return lp_config.validate(config)


def _deep_update(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


class LocalReference(threading.Thread):
    """The same probe, uninterrupted, with the local profile: starts once the SLURM run's feature
    store is finished, in a second copy of the workflow that receives the store's inputs."""

    def __init__(self, slurm_work: Path, local_work: Path) -> None:
        super().__init__(daemon=True)
        self.slurm_work, self.local_work = slurm_work, local_work
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        try:
            while not (self.slurm_work / STORE_MANIFEST).exists():
                if self.stop.wait(1):
                    return
            time.sleep(1)
            for part in ("dataset", "data", "models", "features"):
                shutil.copytree(self.slurm_work / "results/demo" / part, self.local_work / "results/demo" / part)
            start = time.monotonic()
            snakemake(self.local_work, TARGET, "--profile", "profiles/local", "--cores", "2",
                      "--configfile", *CONFIGS, timeout=600)
            self.seconds = time.monotonic() - start
        except BaseException as err:  # reported by the test that needs the reference
            self.error = err


@dataclass
class SlurmRun:
    work: Path
    reference: LocalReference
    stdout: str
    seconds: float
    jobs: dict[str, list[tuple[str, int]]]  # rule -> [(wildcards dir, SLURM job id)], ids ascending


def slurm_jobs(work: Path) -> dict[str, list[tuple[str, int]]]:
    """Job ids from the executor plugin's logs: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<id>.log"""
    jobs: dict[str, list[tuple[str, int]]] = {}
    for log in (work / ".snakemake/slurm_logs").glob("rule_*/**/*.log"):
        rel = log.relative_to(work / ".snakemake/slurm_logs")
        rule = rel.parts[0].removeprefix("rule_")
        jobs.setdefault(rule, []).append(("/".join(rel.parts[1:-1]), int(log.stem)))
    return {rule: sorted(found, key=lambda x: x[1]) for rule, found in jobs.items()}


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory) -> SlurmRun:  # noqa: F811
    base = tmp_path_factory.mktemp("slurm_profile")
    work, local = copy_repo(base / "slurm"), copy_repo(base / "local")
    reference = LocalReference(work, local)
    reference.start()
    start = time.monotonic()
    try:
        proc = snakemake(work, TARGET, "--profile", "profiles/slurm", *FAST, *resource_args(),
                         "--configfile", *CONFIGS, timeout=900)
    finally:
        reference.stop.set()
    seconds = time.monotonic() - start
    reference.join(timeout=600)
    print(f"SLURM run {seconds:.0f} s; local reference probe {reference.seconds:.0f} s")
    return SlurmRun(work, reference, proc.stdout + proc.stderr, seconds, slurm_jobs(work))


def test_jobs_run_on_slurm_with_the_requested_resources(slurm_run, slurm):  # noqa: F811
    counts = {rule: len(found) for rule, found in slurm_run.jobs.items()}
    assert counts == EXPECTED_JOBS, f"SLURM jobs per rule: {counts}"
    assert len(re.findall(r"has been submitted with SLURM jobid", slurm_run.stdout)) == sum(EXPECTED_JOBS.values())

    cfg = merged_config(slurm_run.work)
    prof = profile()
    expected_cpus, observed_cpus = {}, {}
    for rule, found in slurm_run.jobs.items():
        cpus = expected_cpus[rule] = profile_value(prof, rule, "cpus_per_task", 1, lp_resources.threads(rule, cfg))
        wildcards = SimpleNamespace(model=MODEL if rule not in ("synthetic_dataset", "preprocess") else None)
        attempts: dict[str, int] = {}
        for wc_dir, job_id in found:
            attempt = attempts[wc_dir] = attempts.get(wc_dir, 0) + 1  # ids ascend, so retries come later
            info = slurm.job(job_id)
            assert info, f"slurmctld forgot job {job_id} ({rule})"
            where = f"{rule} {wc_dir} job {job_id}: {info}"
            assert info["Partition"] == slurm.partition, where
            assert info["BatchHost"] == slurm.host, where
            assert Path(info["WorkDir"]).resolve() == slurm_run.work.resolve(), where
            assert int(info["NumCPUs"]) == cpus, where
            asked = lp_resources.mem_mb(rule, cfg, getattr(wildcards, "model", None), attempt)
            want_mb = profile_value(prof, rule, "mem_mb", attempt, asked)
            assert memory_mb(info["MinMemoryNode"]) == want_mb, where
            want_min = ((FIRST_LIMIT_MIN if attempt == 1 else RETRY_LIMIT_MIN) if rule == "probe"
                        else profile_value(prof, rule, "runtime", attempt,
                                           lp_resources.runtime_min(rule, cfg, attempt)))
            assert minutes(info["TimeLimit"]) == want_min, where
            assert f"rule_{rule}" in info.get("Comment", ""), where
            if not (rule == "probe" and attempt == 1):
                assert info["JobState"] == "COMPLETED", where
            observed_cpus[rule] = int(info["NumCPUs"])
    # Per rule: the rule's threads (the config's extract/scan/probe.threads; 1 for the small rules).
    assert observed_cpus == expected_cpus, (observed_cpus, expected_cpus)


def test_probe_killed_by_time_limit_is_retried_and_resumes_to_the_same_result(slurm_run, slurm):  # noqa: F811
    probes = slurm_run.jobs.get("probe", [])
    assert len(probes) == 2, (f"expected a killed first attempt and a retry, got probe jobs {probes}; if the "
                              "first attempt finished within its 1-minute limit, raise probe.epochs in "
                              "config/slurm_test.yaml")
    (_, first), (_, second) = probes
    first_info, second_info = slurm.job(first), slurm.job(second)
    assert first_info["JobState"] == "TIMEOUT" and first_info["Reason"] == "TimeLimit", first_info
    assert minutes(first_info["TimeLimit"]) == FIRST_LIMIT_MIN, first_info
    assert second_info["JobState"] == "COMPLETED", second_info
    assert minutes(second_info["TimeLimit"]) == RETRY_LIMIT_MIN, second_info
    assert f"SLURM-job '{first}' failed, SLURM status is: 'TIMEOUT'" in slurm_run.stdout

    log = (slurm_run.work / PROBE_LOG).read_text()
    resumed = re.findall(r"resumed from \S+ at epoch (\d+) batch (\d+)", log)
    assert len(resumed) == 1, f"expected exactly one resume in {PROBE_LOG}:\n{log[-3000:]}"
    epoch, batch = map(int, resumed[0])
    assert (epoch, batch) > (1, 0), f"the retry resumed without progress (epoch {epoch} batch {batch})"
    epochs_cfg = merged_config(slurm_run.work)["probe"]["epochs"]
    # The retry trained only the rest: epochs before the resume point are logged once, by attempt 1.
    after_resume = log.split("resumed from", 1)[1]
    assert f"Epoch {epoch - 1:03d} |" not in after_resume and f"Epoch {epochs_cfg:03d} |" in after_resume

    ref = slurm_run.reference
    assert ref.error is None, f"local reference run failed: {ref.error}"
    got, want = slurm_run.work / PROBE_DIR, ref.local_work / PROBE_DIR
    rows_got, rows_want = ((d / "epochs.csv").read_text().splitlines() for d in (got, want))
    diff = [(a, b) for a, b in zip(rows_got, rows_want) if a != b]
    assert not diff and len(rows_got) == len(rows_want), (
        f"epochs.csv differs from the uninterrupted run (resumed at epoch {epoch} batch {batch}); "
        f"{len(diff)} rows differ, first (SLURM, local): {diff[:2]}")
    assert len((got / "epochs.csv").read_text().splitlines()) == epochs_cfg + 1
    m_got, m_want = (json.loads((d / "metrics.json").read_text()) for d in (got, want))
    for m in (m_got, m_want):
        m.pop("run")  # how the last run went (wall time, loader mode), the only field allowed to differ
    assert m_got == m_want
    with np.load(got / "predictions.npz") as a, np.load(want / "predictions.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
