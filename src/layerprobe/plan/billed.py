"""What the plan costs in the cluster's billing units, two ways it could have gone otherwise:
probes on GPUs vs on CPU nodes (`probe.device`), and the seed's way (each probe holding its
whole layer in RAM).

Billing per job is `layerprobe.billing` (SLURM's own arithmetic) over what each job requests
(`layerprobe.resources` through `estimates.requested`); billing-hours are billing x the plan's
expected hours, the unit fairshare's usage grows in (SLURM adds billing x elapsed seconds).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd

from .. import billing as lp_billing
from .. import config as lp_config
from .. import resources
from ..models.layers import CLS_SUFFIX
from .estimates import layer_bytes, probe_layer_hours, requested, rule_rows

DEVICES = ("cuda", "cpu")


def with_probe_device(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The config with probes on `device` (probe.threads as given, else that device's default)."""
    other = copy.deepcopy(config)
    other["probe"]["device"] = device
    return other


def probe_devices(config: dict[str, Any], sizes: dict[str, int], stores: pd.DataFrame,
                  scan: pd.DataFrame) -> pd.DataFrame:
    """The whole plan's totals with probes on a GPU and on CPU nodes; everything else as configured."""
    rows = []
    for device in DEVICES:
        cfg = with_probe_device(config, device)
        rules = rule_rows(cfg, sizes, stores, scan)
        probe = rules[rules["rule"] == "probe"]
        rows.append({"device": device, "probe_threads": int(resources.threads("probe", cfg)),
                     "probe_hours": float(probe["hours"].sum()), "probe_gpu_hours": float(probe["gpu_hours"].sum()),
                     "probe_billing_hours": float(probe["billing_hours"].sum()),
                     "probe_mem_mb": int(probe["mem_mb_per_job"].max()) if len(probe) else 0,
                     "gpu_hours": float(rules["gpu_hours"].sum()), "billing_hours": float(rules["billing_hours"].sum()),
                     "ram_gb_hours": float(rules["ram_gb_hours"].sum())})
    return pd.DataFrame(rows)


def seed_style(config: dict[str, Any], sizes: dict[str, int], rules: pd.DataFrame) -> pd.DataFrame:
    """Per probed model, the seed's approach: a GPU probe (its CPUs and GPU as this plan's GPU probe
    asks) whose RAM holds the whole layer, training and validation splits in fp16 (the plan's own
    layer bytes) plus the same fixed overhead, for the same hours as the GPU probe here."""
    bill = lp_billing.from_config(config)
    gpu_config = with_probe_device(config, "cuda")
    images = sum(sizes.values())
    epochs, seeds = config["probe"]["epochs"], len(config["probe"]["seeds"])
    rows = []
    for name, model in config["models"].items():
        spec = lp_config.spec(config, name)
        want = requested("probe", gpu_config, name)
        stores = len(lp_config.prompt_ids(model))
        hours = probe_layer_hours(spec, model, sizes, epochs)
        for cls in lp_config.cls_variants(model):
            mem = {k: resources.OVERHEAD_MB + math.ceil(layer_bytes(spec, k, images) / 2**20) for k in hours}
            billed = {k: bill.job(want["cpus"], mem[k], want["gpus"]) for k in hours}
            repeat = stores * seeds
            rows.append({"model": name + (CLS_SUFFIX if cls else ""), "jobs": len(hours) * repeat,
                         "mem_mb_per_job": max(mem.values()), "billing_per_job": max(billed.values()),
                         "hours": sum(hours.values()) * repeat,
                         "billing_hours": sum(billed[k] * hours[k] for k in hours) * repeat})
    return pd.DataFrame(rows, columns=["model", "jobs", "mem_mb_per_job", "billing_per_job", "hours",
                                       "billing_hours"])
