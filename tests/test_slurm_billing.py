"""SLURM's billing of this workflow's jobs equals `layerprobe plan`'s, exactly, on a real slurmctld.

The local test cluster (tests/slurm/start_local_slurm.sh) gets TRESBillingWeights on its partition,
and for the second case PriorityFlags=MAX_TRES, through tests/slurm/billing_weights.sh (`scontrol
reconfigure`; restored afterwards, so the other SLURM tests see the plain cluster). A demo subset
runs with `--profile profiles/slurm`, probes on the CPU (probe.device: cpu, 2 threads), and for every
SLURM job `scontrol show job`'s CPUs, memory and `billing=` must be the plan's: the plan's row for
preprocess, extract and probe, and for the small rules the same requested resources
(`plan.estimates.requested`) priced by `layerprobe.billing`. Probe jobs must ask no GPU.

- Case 1, the sum rule: the whole subset (8 jobs).
- Case 2, MAX_TRES: finalize_store and the probe again (their outputs deleted): a job
  billed by its memory, one by its node.

Read from scontrol, not sacct: the local cluster has no slurmdbd, so sacct is unavailable; finished
jobs stay visible to scontrol for an hour (MinJobAge=3600). Without slurmdbd gres/gpu cannot be a
TRES either ("slurmdbd is required to run with TRES gres/gpu"), so the weights here are CPU, Mem and
Node; GPU weights are covered by tests/test_billing.py only. A submitted job's billing is fixed at
submission and allocation, so short jobs suffice (probe.epochs: 2); the ~4.5 minutes (measured
here: 3 min + 1 min) are the plugin's status checks (2 s, then 10 s longer each time: ~36 s per
job), not the jobs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from layerprobe import billing
from layerprobe import config as lp_config
from layerprobe.plan import estimates as lp_plan
from tests.conftest import ROOT, copy_repo, snakemake
from tests.slurm_cluster import memory_mb, parse_key_values, portable_profile_args, slurm  # noqa: F401
from tests.test_slurm import FAST, MODEL, PROBE_DIR, STORE_MANIFEST, TARGET, slurm_jobs

pytestmark = pytest.mark.slow  # two SLURM runs: ~4.5 min here, mostly the executor plugin's status polling

SCRIPT = ROOT / "tests" / "slurm" / "billing_weights.sh"
OVERLAY = "config/slurm_billing.yaml"
# Mem per MB (no unit); Node's fraction makes every sum fractional (truncation matters). With
# MAX_TRES the 2-CPU, 2 GB probe is billed by its memory (600 < 1024 > 600.25), finalize_store's
# 1 CPU and 1 GB by the node (300, 512 < 600.25).
WEIGHTS = "CPU=300,Mem=0.5,Node=600.25"


def set_weights(weights: str = "", flags: str = "") -> None:
    proc = subprocess.run(["bash", str(SCRIPT), *([weights, flags] if weights else [])], capture_output=True, text=True)
    assert proc.returncode == 0, f"billing_weights.sh failed: {proc.stdout}\n{proc.stderr}"


def write_overlay(work: Path, max_tres: bool) -> dict:
    overlay = {"probe": {"device": "cpu", "threads": 2, "epochs": 2},
               "cluster": {"billing_weights": WEIGHTS, "max_tres": max_tres}}
    (work / OVERLAY).write_text(yaml.safe_dump(overlay))
    config = lp_config.merged_raw([work / "config/demo.yaml", work / OVERLAY])
    return lp_config.validate(config)


def run(work: Path) -> None:
    snakemake(work, TARGET, "--profile", "profiles/slurm", *FAST,
              *portable_profile_args(ROOT / "profiles/slurm/config.yaml"),
              "--configfile", "config/demo.yaml", OVERLAY, timeout=600)


def check_jobs(config: dict, jobs: dict[str, list[tuple[str, int]]], skip: set[int]) -> dict[str, list[int]]:
    """Every job not in `skip`: CPUs, memory and billing= as planned; probes without a GPU.
    Returns the billing seen per rule."""
    plan = lp_plan.plan(config)
    rows = plan.rules.set_index(["rule", "model"])
    bill = billing.from_config(config)
    seen: dict[str, list[int]] = {}
    for rule, found in jobs.items():
        model = MODEL if rule not in ("synthetic_dataset", "preprocess") else None
        want = lp_plan.requested(rule, config, model)
        expected = bill.job(want["cpus"], want["mem_mb"], want["gpus"])
        if (rule, model or "") in rows.index:  # the plan's own row for the rules it lists
            row = rows.loc[(rule, model or "")]
            assert (row["cpus_per_job"], row["mem_mb_per_job"], row["gpus_per_job"]) == \
                (want["cpus"], want["mem_mb"], want["gpus"])
            expected = int(row["billing_per_job"])
        for _, job_id in found:
            if job_id in skip:
                continue
            info = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
            job = parse_key_values(info.stdout)
            where = f"{rule} job {job_id}: {job}"
            assert job.get("JobState") == "COMPLETED", where
            tres = dict(item.split("=", 1) for item in job["TRES"].split(","))
            assert int(job["NumCPUs"]) == want["cpus"] and memory_mb(tres["mem"]) == want["mem_mb"], where
            assert int(tres["billing"]) == expected, where
            if rule == "probe":
                assert want["gpus"] == 0 and "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), where
            seen.setdefault(rule, []).append(int(tres["billing"]))
    return seen


@pytest.fixture
def weighted(slurm):  # noqa: F811
    yield slurm
    set_weights()  # the plain cluster again, whatever happened


def test_slurm_bills_every_job_as_the_plan_says(weighted, tmp_path):
    work = copy_repo(tmp_path / "billing")
    set_weights(WEIGHTS)
    config = write_overlay(work, max_tres=False)
    run(work)
    first = slurm_jobs(work)
    assert sum(len(v) for v in first.values()) == 8, first
    summed = check_jobs(config, first, skip=set())
    assert len(summed["probe"]) == 1 and summed["probe"][0] > 1200  # the sum: 2 CPUs x 300 + memory + node
    assert set(summed) == {"synthetic_dataset", "preprocess", "build_tiny_model", "prepare_store", "extract",
                           "finalize_store", "probe"}

    set_weights(WEIGHTS, "MAX_TRES")
    config = write_overlay(work, max_tres=True)
    # The store's manifest (finalize_store's output) and the probe's outputs deleted: both rerun.
    # (Not --forcerun: with it, Snakemake 9.27 ran only the forced rule, not the probe after it.)
    for path in [STORE_MANIFEST, *(f"{PROBE_DIR}/{name}" for name in
                                   ("metrics.json", "epochs.csv", "predictions.npz", "per_image.npz"))]:
        (work / path).unlink()
    run(work)
    done = {job_id for found in first.values() for _, job_id in found}
    maxed = check_jobs(config, slurm_jobs(work), skip=done)
    assert set(maxed) == {"finalize_store", "probe"}, maxed
    assert maxed["probe"] == [1024]  # 2048 MB x 0.5: the largest weighted node TRES
    assert maxed["finalize_store"] == [600]  # the node's 600.25, truncated
