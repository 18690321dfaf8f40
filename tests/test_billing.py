"""Billing as SLURM computes it (layerprobe.billing), checked at DAG build, and priced by the plan.

The arithmetic follows SLURM's source (slurm-22-05-8-1: assoc_mgr_tres_weighted,
_tres_weight_item); tests/test_slurm_billing.py checks it against a running slurmctld.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from layerprobe import billing, resources
from layerprobe import config as lp_config
from layerprobe.plan import estimates as lp_plan
from layerprobe.plan import text as plan_text

ROOT = Path(__file__).resolve().parents[1]
# One fit of the seed's two jobs (docs/DESIGN.md, "Billing"): 2 per MB of RAM (Mem=2048G), CPU 2, GPU 5.
SEED_WEIGHTS = "CPU=2,Mem=2048G,GRES/gpu=5"


@pytest.fixture(scope="module")
def real_config() -> dict:
    config = lp_config.load(ROOT / "config" / "config.yaml")
    config["dataset"]["root"] = "/nonexistent/ADEChallengeData2016"  # sizes: ADE20K's published numbers
    return config


def test_the_seeds_two_jobs_are_billed_as_on_their_cluster() -> None:
    bill = billing.Billing(billing.parse(SEED_WEIGHTS), False, SEED_WEIGHTS)
    assert bill.job(cpus=16, mem_mb=364 * 1024, gpus=16) == 745584
    assert bill.job(cpus=8, mem_mb=128 * 1024, gpus=1) == 262165


@pytest.mark.parametrize("text, weights", [
    ("CPU=1.0,Mem=0.25G,GRES/gpu=2.0", {"cpu": 1.0, "mem": 0.25 / 1024, "gres/gpu": 2.0}),
    ("cpu=1,mem=2", {"cpu": 1.0, "mem": 2.0}),  # case-insensitive; Mem without a unit: per MB
    ("Mem=2K", {"mem": 2.0}),  # K is below Mem's base unit (MB): no conversion, as in SLURM
    ("Mem=2M,Node=3", {"mem": 2.0, "node": 3.0}),
    ("Mem=1T", {"mem": 1 / 1024**2}),
    ("Mem=4gb", {"mem": 4 / 1024}),  # only the unit's first letter counts
    ("CPU=1K", {"cpu": 1 / 1024}),  # CPU's base unit is none
    ("CPU=1,,GRES/gpu=1e1", {"cpu": 1.0, "gres/gpu": 10.0}),  # empty items skipped, strtod's exponents
])
def test_weights_parse_with_slurms_units(text: str, weights: dict) -> None:
    assert billing.parse(text) == weights


@pytest.mark.parametrize("text", ["CPU", "CPU=", "Cores=1", "CPU=x", "Mem=2Q", "GRES/gpu:a100=1", "Mem=1.5.2G",
                                  "gres=1"])
def test_bad_weights_fail_at_dag_build_naming_the_key(real_config: dict, text: str) -> None:
    config = copy.deepcopy(real_config)
    config["cluster"] = {"billing_weights": text}
    with pytest.raises(lp_config.ConfigError, match=r"cluster\.billing_weights"):
        lp_config.validate(config)


def test_the_real_config_names_the_seed_fit_and_no_weights_bill_the_cpus(real_config: dict) -> None:
    assert real_config["cluster"] == {"billing_weights": SEED_WEIGHTS, "max_tres": False}
    config = copy.deepcopy(real_config)
    del config["cluster"]
    config = lp_config.validate(config)
    assert config["cluster"] == {"billing_weights": None, "max_tres": False}  # the defaults
    bill = billing.from_config(config)
    assert bill.weights is None and bill.job(cpus=3, mem_mb=10**6, gpus=8) == 3
    assert billing.parse("") is None and billing.parse(" ") is None


def test_sum_max_tres_and_truncation() -> None:
    weights = billing.parse("CPU=1.5,Mem=1G,GRES/gpu=10,Node=0.5")
    # sum: 3 x 1.5 + 3000/1024 + 2 x 10 + 0.5 = 27.93 -> 27 (a double into SLURM's integer TRES array)
    assert billing.Billing(weights).job(cpus=3, mem_mb=3000, gpus=2) == 27
    # MAX_TRES: the largest of the node TRES (cpu 4.5, mem 2.93, node 0.5, gres 20)
    assert billing.Billing(weights, max_tres=True).job(cpus=3, mem_mb=3000, gpus=2) == 20
    assert billing.Billing(weights, max_tres=True).job(cpus=3, mem_mb=3000, gpus=0) == 4
    # Weights of TRES these jobs do not use count nothing; SLURM skips the billing TRES itself.
    assert billing.Billing(billing.parse("CPU=1,License/matlab=100,Billing=7")).job(2, 100, 1) == 2


def test_the_plan_bills_every_rule_from_the_requested_resources(real_config: dict) -> None:
    config = copy.deepcopy(real_config)
    config["cluster"] = {"billing_weights": SEED_WEIGHTS, "max_tres": False}
    result = lp_plan.plan(config)
    bill = billing.from_config(config)
    for row in result.rules.itertuples():
        model = row.model or None
        want = lp_plan.requested(row.rule, config, model)
        assert (row.cpus_per_job, row.mem_mb_per_job, row.gpus_per_job) == (
            resources.threads(row.rule, config), want["mem_mb"], want["gpus"])
        assert row.billing_per_job == bill.job(row.cpus_per_job, row.mem_mb_per_job, row.gpus_per_job)
        assert row.billing_hours == pytest.approx(row.billing_per_job * row.hours)
    assert result.totals["billing_hours"] == pytest.approx(result.rules["billing_hours"].sum())
    text = plan_text.format_plan(result)
    assert f"TRESBillingWeights={SEED_WEIGHTS}" in text and "billing-hours" in text and "Cheaper: probes on" in text
    assert "The seed's way" in text


def test_probes_on_cpu_leave_gpu_hours_to_extraction_and_scans(real_config: dict) -> None:
    real_config = copy.deepcopy(real_config)
    real_config["cluster"] = {"billing_weights": None, "max_tres": False}  # the plan says it has none
    result = lp_plan.plan(real_config)
    devices = result.devices.set_index("device")
    rules = result.rules
    not_probe = rules.loc[rules["rule"] != "probe", "gpu_hours"].sum()
    assert devices.loc["cpu", "gpu_hours"] == pytest.approx(not_probe)
    assert devices.loc["cpu", "probe_gpu_hours"] == 0
    assert devices.loc["cuda", "gpu_hours"] == pytest.approx(result.totals["gpu_hours"])  # auto = cuda here
    # A CPU probe asks for its step's logits too (layerprobe.resources.probe_step_mb).
    cpu = copy.deepcopy(real_config)
    cpu["probe"]["device"] = "cpu"
    assert resources.mem_mb("probe", cpu, "llava15_7b") == resources.mem_mb("probe", real_config, "llava15_7b") \
        + resources.probe_step_mb(cpu, "llava15_7b")
    assert "no cluster.billing_weights" in plan_text.format_plan(result)  # and it says so


def test_the_seed_holds_each_layer_in_ram(real_config: dict) -> None:
    result = lp_plan.plan(real_config)
    seed = result.seed.set_index("model")
    llava = real_config["models"]["llava15_7b"]
    spec = lp_config.spec(real_config, "llava15_7b")
    layer = lp_plan.layer_bytes(spec, "layer_16", 22210)
    assert seed.loc["llava15_7b", "mem_mb_per_job"] == resources.OVERHEAD_MB + -(-layer // 2**20)
    assert seed.loc["llava15_7b", "mem_mb_per_job"] > 100_000  # ~99 GB: the seed asked 128-364 GB
    assert seed.loc["llava15_7b", "jobs"] == len(lp_config.probe_ids(llava))
