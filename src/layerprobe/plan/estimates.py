"""What a config will cost before anything runs: disk per feature store, RAM and GPU-hours per
rule, the disk-quota check, and what the layer scan saves against extracting every layer.

Bytes are exact: they follow the store layout of docs/DESIGN.md (fp16 tokens, one array per
layer and split, uncompressed), e.g. one LLaVA-7B LLM layer over ADE20K's training split is
20210 images x 576 tokens x 4096 dims x 2 B = 95.36 GB. GB means 10^9 bytes throughout.
RAM and runtime per job are what the rules request (`layerprobe.resources`, the single source).
Hours are estimates from the ASSUMED throughputs below: round numbers for one A100-class GPU,
not measurements. Replace them with your own (<results>/benchmarks/ after a first run).

Without the data (`dataset.root` absent) the split sizes are ADE20K's, 20210 training + 2000
validation. `plan.text` formats a plan; `layerprobe plan` (cli/plan.py) prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import billing as lp_billing
from .. import config as lp_config
from .. import devices, resources
from ..features.store import SPLITS, Layout
from ..fingerprint import Fingerprint
from ..formatting import human_bytes
from ..models.layers import CLS_SUFFIX
from ..models.specs import ModelSpec, requested_keys
from ..probing.throughput import PROBE_CPU_CORES_PER_GB_S
from ..scan.cost import plan_groups, select_keys

# ADE20K SceneParsing (ADEChallengeData2016) split sizes, used when the data is not on this machine.
ADE20K_SIZES = {"training": 20210, "validation": 2000}

# ASSUMED forward throughput on one A100-class GPU in fp16: 35% of its 312 TFLOP/s dense, spent
# on each model's forward FLOPs per image (specs: 2 per weight per token, from the model's own
# config): ViT-B/16 34 GFLOP -> ~3,200 images/s, LLaVA-1.5-7B 8.3 TFLOP -> ~13 images/s.
# Planning guesses, not measurements.
ASSUMED_GPU_TFLOPS = 312.0 * 0.35
ASSUMED_TINY_IMAGES_PER_S = 200.0  # demo models on a CPU
ASSUMED_WRITE_GB_PER_S = 1.0  # feature store writes (extraction is bound by max(compute, writes))
ASSUMED_READ_GB_PER_S = 1.0  # probe loader, whole-chunk reads: the probe is IO-bound, not compute-bound
ASSUMED_GRAM_TFLOPS = 50.0  # scan: X^T X accumulation in fp32/TF32 on the GPU
ASSUMED_CPU_IMAGES_PER_S = 50.0  # preprocess: decode + resize on one CPU core

ASSUMPTIONS = [
    ("extract / scan forward", f"{ASSUMED_GPU_TFLOPS:g} TFLOP/s per A100-class GPU (35% of its fp16 peak) over "
     "each model's forward FLOPs per image (2 per weight per token, from its config); "
     f"tiny demo models {ASSUMED_TINY_IMAGES_PER_S:g} images/s"),
    ("extract writes", f"{ASSUMED_WRITE_GB_PER_S:g} GB/s to the feature store"),
    ("probe reads", f"{ASSUMED_READ_GB_PER_S:g} GB/s; every epoch reads the layer's training and validation "
                    "split once"),
    ("scan statistics", f"{ASSUMED_GRAM_TFLOPS:g} TFLOP/s for the per-layer Gram matrices; one training pass "
                        "per group of layers (scan.max_stats_mb), plus one validation pass"),
    ("preprocess", f"{ASSUMED_CPU_IMAGES_PER_S:g} images/s (CPU)"),
    ("probe on the CPU", f"at most probe.threads / {PROBE_CPU_CORES_PER_GB_S:g} GB/s (cores per GB/s of the probe "
                         "step, layerprobe.probing.throughput: provisional until docs/BENCHMARKS.md's per-core table "
                         "is measured), else the read speed"),
]


@dataclass
class Plan:
    sizes: dict[str, int]  # images per split after max_images
    size_source: str
    stores: pd.DataFrame  # per (model, prompt): layers, tokens, dims, bytes
    data: pd.DataFrame  # per resolution: preprocessed data store bytes
    rules: pd.DataFrame  # per (rule, model): jobs, mem per job, hours per job, GPU-hours, requested runtime
    scan: pd.DataFrame  # per scanned (model, prompt): layers scanned, bytes a full extraction would write
    totals: dict[str, float]
    quota_gb: float | None = None
    warnings: list[str] = field(default_factory=list)
    billing: lp_billing.Billing = field(default_factory=lambda: lp_billing.Billing(None))
    devices: pd.DataFrame | None = None  # probes on cuda vs cpu: totals each way (plan.billed)
    seed: pd.DataFrame | None = None  # the seed's way: the whole layer resident in RAM (plan.billed)


# --------------------------------------------------------------------------------------------
# Dataset sizes
# --------------------------------------------------------------------------------------------

def find_dataset_sizes(config: dict[str, Any], given: dict[str, int] | None = None) -> tuple[dict[str, int], str]:
    """Images per split (before max_images) and where the numbers come from."""
    if given:
        return dict(given), "given on the command line"
    synthetic = config["dataset"].get("synthetic")
    if synthetic:
        return {s: int(synthetic[s]) for s in SPLITS}, "synthetic dataset config"
    root = Path(config["dataset"]["root"])
    counted = _count_images(root)
    if counted:
        return counted, f"counted in {root}"
    return dict(ADE20K_SIZES), f"ADE20K's split sizes; {root} not found on this machine"


def _count_images(root: Path) -> dict[str, int] | None:
    dirs = {s: root / "images" / s for s in SPLITS}
    if not all(d.is_dir() for d in dirs.values()):
        return None
    suffixes = (".jpg", ".jpeg", ".png")
    return {s: sum(1 for p in d.iterdir() if p.suffix.lower() in suffixes) for s, d in dirs.items()}


def capped(config: dict[str, Any], sizes: dict[str, int]) -> dict[str, int]:
    cap = config["dataset"]["max_images"]
    return {s: min(n, cap.get(s) or n) for s, n in sizes.items()}


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------

def store_layout(name: str, spec: ModelSpec, prompt: str, sizes: dict[str, int], chunk_images: int) -> Layout:
    """The same Layout the extraction writes, so the plan's bytes are the store's bytes."""
    orders = {s: range(sizes[s]) for s in SPLITS}  # only the counts matter for bytes
    return Layout(model=name, prompt_id=prompt, prompt_text=None, dims=spec.dims(), tokens=spec.tokens,
                  grid=spec.grid, label_size=spec.image_size, has_cls=spec.has_cls, chunk_images=chunk_images,
                  orders=orders, image_ids={}, fingerprint=Fingerprint({}))  # type: ignore[arg-type]


def layer_bytes(spec: ModelSpec, key: str, images: int) -> int:
    """One layer's fp16 patch tokens (plus its CLS array when the model has one)."""
    dim = spec.dims()[key]
    return images * (spec.tokens * dim * 2 + (dim * 2 if spec.has_cls else 0))


def store_rows(config: dict[str, Any], sizes: dict[str, int]) -> pd.DataFrame:
    rows = []
    for name, model in config["models"].items():
        spec = lp_config.spec(config, name)
        keys = requested_keys(model)
        for prompt in lp_config.prompt_ids(model):
            layout = store_layout(name, spec, prompt, sizes, config["store"]["chunk_images"])
            split_bytes = {s: layout.bytes_per_split(s, keys) for s in SPLITS}
            largest = max(keys, key=lambda k: spec.dims()[k])
            rows.append({"model": name, "prompt": prompt, "layers": len(keys), "tokens": spec.tokens,
                         "dim": spec.dims()[largest],
                         "largest_layer_training_bytes": layer_bytes(spec, largest, sizes["training"]),
                         "training_bytes": split_bytes["training"], "validation_bytes": split_bytes["validation"],
                         "bytes": sum(split_bytes.values())})
    return pd.DataFrame(rows, columns=["model", "prompt", "layers", "tokens", "dim", "largest_layer_training_bytes",
                                       "training_bytes", "validation_bytes", "bytes"])


# A pad data store also keeps every validation annotation at its original size (uint8, before
# compression); the plan assumes ADE20K's common 683 x 512 (the report shows the measured size).
ASSUMED_ORIGINAL_PIXELS = 683 * 512
BOX_BYTES = 4 * 8  # (top, left, height, width) float64 per image


def data_rows(config: dict[str, Any], sizes: dict[str, int]) -> pd.DataFrame:
    """Preprocessed uint8 images (res x res x 3) + labels (res x res), one store per input resolution
    and geometry; a pad store adds content boxes and the validation annotations at original size."""
    total = sum(sizes.values())
    rows = []
    for res, geometry in lp_config.data_stores(config):
        pad = geometry == "pad"
        extra = total * BOX_BYTES + sizes.get("validation", 0) * ASSUMED_ORIGINAL_PIXELS if pad else 0
        rows.append({"store": lp_config.data_name(res, geometry), "resolution": res, "geometry": geometry,
                     "images": total, "bytes": total * res * res * 4 + extra})
    return pd.DataFrame(rows, columns=["store", "resolution", "geometry", "images", "bytes"])


def data_store_bytes(config: dict[str, Any], sizes: dict[str, int]) -> int:
    return int(data_rows(config, sizes)["bytes"].sum())


# --------------------------------------------------------------------------------------------
# Requested resources (as the rules compute them) and expected hours per rule
# --------------------------------------------------------------------------------------------

def requested(rule: str, config: dict[str, Any], model: str | None = None, attempt: int = 1) -> dict[str, int]:
    """What one job of `rule` asks the scheduler for: `layerprobe.resources`, as the rules ask it."""
    return {"mem_mb": int(resources.mem_mb(rule, config, model, attempt)),
            "runtime_min": int(resources.runtime_min(rule, config, attempt)), "gpus": int(resources.gpus(rule, config)),
            "cpus": int(resources.threads(rule, config))}


def images_per_s(spec: ModelSpec, model: dict[str, Any]) -> float:
    """Assumed forward throughput: the GPU's assumed FLOP rate over the model's FLOPs per image."""
    if model.get("tiny") is not None or spec.flops <= 0:
        return ASSUMED_TINY_IMAGES_PER_S
    return ASSUMED_GPU_TFLOPS * 1e12 / spec.flops


def _rule_row(rule: str, config: dict[str, Any], model: str | None, jobs: int, hours_per_job: float,
              total_hours: float | None = None) -> dict[str, Any]:
    """`total_hours` when jobs differ in length (probes of narrow and wide layers)."""
    want = requested(rule, config, model)
    total = jobs * hours_per_job if total_hours is None else total_hours
    bill = lp_billing.from_config(config).job(want["cpus"], want["mem_mb"], want["gpus"])
    return {"rule": rule, "model": model or "", "jobs": jobs, "mem_mb_per_job": want["mem_mb"],
            "gpus_per_job": want["gpus"], "cpus_per_job": want["cpus"], "billing_per_job": bill,
            "hours_per_job": hours_per_job, "requested_runtime_h": want["runtime_min"] / 60, "hours": total,
            "gpu_hours": total * want["gpus"], "ram_gb_hours": total * want["mem_mb"] / 1024,
            "billing_hours": total * bill}


def rule_rows(config: dict[str, Any], sizes: dict[str, int], stores: pd.DataFrame,
              scan: pd.DataFrame) -> pd.DataFrame:
    """Per rule and model: jobs, requested RAM/runtime per job, expected hours, GPU- and RAM-hours."""
    images = sum(sizes.values())
    parts = config["store"]["parts"]
    resolutions = lp_config.resolutions(config)
    rows = [_rule_row("preprocess", config, None, len(resolutions), images / ASSUMED_CPU_IMAGES_PER_S / 3600)]
    epochs = config["probe"]["epochs"]
    for _, store in stores.iterrows():
        model = config["models"][store["model"]]
        compute_s = images / images_per_s(lp_config.spec(config, store["model"]), model)
        write_s = store["bytes"] / (ASSUMED_WRITE_GB_PER_S * 1e9)
        rows.append(_rule_row("extract", config, store["model"], parts, max(compute_s, write_s) / parts / 3600))
        longest, total = _probe_hours(lp_config.spec(config, store["model"]), model, sizes, epochs,
                                      probe_read_gb_s(config))
        seeds = len(config["probe"]["seeds"])  # every seed trains every probe again
        for cls in lp_config.cls_variants(model):  # a line per CLS variant; both read the one store
            rows.append(_rule_row("probe", config, store["model"] + (CLS_SUFFIX if cls else ""),
                                  int(store["layers"]) * seeds, longest, total * seeds))
    for _, row in scan.iterrows():
        model = config["models"][row["model"]]
        speed = images_per_s(lp_config.spec(config, row["model"]), model)
        forward_s = (row["training_passes"] * sizes["training"] + sizes["validation"]) / speed
        rows.append(_rule_row("scan", config, row["model"], 1, (forward_s + row["gram_tflop"] / ASSUMED_GRAM_TFLOPS)
                              / 3600))
    return _merge_models(pd.DataFrame(rows))


def probe_read_gb_s(config: dict[str, Any]) -> float:
    """GB/s of features a probe consumes: the read speed, or on the CPU what probe.threads cores
    keep up with at the measured per-core step (`probing.throughput`), whichever is lower."""
    if devices.resolved(config, "probe") == "cuda":
        return ASSUMED_READ_GB_PER_S
    return min(ASSUMED_READ_GB_PER_S, devices.threads(config, "probe") / PROBE_CPU_CORES_PER_GB_S)


def probe_layer_hours(spec: ModelSpec, model: dict[str, Any], sizes: dict[str, int], epochs: int,
                      gb_s: float = ASSUMED_READ_GB_PER_S) -> dict[str, float]:
    """Hours of one probe per layer key: every epoch streams the training split of one layer and
    scores its validation split, so time follows the layer's bytes."""
    images = sum(sizes.values())
    return {k: epochs * layer_bytes(spec, k, images) / (gb_s * 1e9) / 3600 for k in requested_keys(model)}


def _probe_hours(spec: ModelSpec, model: dict[str, Any], sizes: dict[str, int], epochs: int,
                 gb_s: float = ASSUMED_READ_GB_PER_S) -> tuple[float, float]:
    """(longest job, all jobs) in hours."""
    hours = list(probe_layer_hours(spec, model, sizes, epochs, gb_s).values())
    return max(hours), sum(hours)


def _merge_models(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, model): prompts of the same model add jobs, not rows."""
    keys = ["rule", "model", "mem_mb_per_job", "gpus_per_job", "cpus_per_job", "billing_per_job",
            "requested_runtime_h"]
    merged = rows.groupby(keys, sort=False, as_index=False).agg(
        jobs=("jobs", "sum"), hours_per_job=("hours_per_job", "max"), hours=("hours", "sum"),
        gpu_hours=("gpu_hours", "sum"), ram_gb_hours=("ram_gb_hours", "sum"), billing_hours=("billing_hours", "sum"))
    return merged[["rule", "model", "jobs", "mem_mb_per_job", "gpus_per_job", "cpus_per_job", "billing_per_job",
                   "requested_runtime_h", "hours_per_job", "hours", "gpu_hours", "ram_gb_hours", "billing_hours"]]


# --------------------------------------------------------------------------------------------
# The layer scan's savings
# --------------------------------------------------------------------------------------------

def scanned_models(config: dict[str, Any]) -> list[str]:
    return lp_config.scanned_models(config) if config["scan"]["enabled"] else []


def scan_rows(config: dict[str, Any], sizes: dict[str, int]) -> pd.DataFrame:
    """Per scanned (model, prompt): the bytes extracting every scanned layer would write (the scan
    itself writes one CSV), what of that the probes extract anyway, and the scan's compute."""

    columns = ["model", "prompt", "scanned_layers", "also_probed", "full_extraction_bytes", "probed_bytes",
               "bytes_saved_beyond_probed", "training_passes", "gram_tflop"]
    rows = []
    settings = config["scan"]
    cap = None if settings.get("max_stats_mb") is None else int(settings["max_stats_mb"] * 2**20)
    images = sum(sizes.values())
    for name in scanned_models(config):
        model = config["models"][name]
        spec = lp_config.spec(config, name)
        keys, _ = select_keys(spec.dims(), settings["layers"])
        if not keys:
            continue
        extracted = set(requested_keys(model))
        tokens = sizes["training"] * spec.tokens
        passes = len(plan_groups(keys, spec.dims(), cap))
        for prompt in lp_config.prompt_ids(model):
            full = sum(layer_bytes(spec, k, images) for k in keys)
            probed = sum(layer_bytes(spec, k, images) for k in keys if k in extracted)
            rows.append({"model": name, "prompt": prompt, "scanned_layers": len(keys),
                         "also_probed": len(extracted & set(keys)), "full_extraction_bytes": full,
                         "probed_bytes": probed, "bytes_saved_beyond_probed": full - probed,
                         "training_passes": passes,
                         "gram_tflop": sum(2 * tokens * spec.dims()[k] ** 2 for k in keys) / 1e12})
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

def plan(config: dict[str, Any], dataset_sizes: dict[str, int] | None = None) -> Plan:
    """Bytes, RAM and GPU-hours of a (validated or raw) config; warnings for quota and time limits."""
    config = lp_config.validate(config)
    raw, source = find_dataset_sizes(config, dataset_sizes)
    sizes = capped(config, raw)
    stores = store_rows(config, sizes)
    data = data_rows(config, sizes)
    scan = scan_rows(config, sizes)
    rules = rule_rows(config, sizes, stores, scan)
    totals = {"feature_bytes": float(stores["bytes"].sum()), "data_bytes": float(data["bytes"].sum()),
              "gpu_hours": float(rules["gpu_hours"].sum()), "ram_gb_hours": float(rules["ram_gb_hours"].sum()),
              "job_hours": float(rules["hours"].sum()), "jobs": float(rules["jobs"].sum()),
              "billing_hours": float(rules["billing_hours"].sum()),
              "scan_full_bytes": float(scan["full_extraction_bytes"].sum()),
              "scan_saved_bytes": float(scan["bytes_saved_beyond_probed"].sum())}
    totals["disk_bytes"] = totals["feature_bytes"] + totals["data_bytes"]
    quota = config["store"]["disk_quota_gb"]
    from .billed import probe_devices, seed_style

    return Plan(sizes, source, stores, data, rules, scan, totals, quota, _warnings(quota, totals, rules),
                lp_billing.from_config(config), probe_devices(config, sizes, stores, scan),
                seed_style(config, sizes, rules))


def _warnings(quota: float | None, totals: dict[str, float], rules: pd.DataFrame) -> list[str]:
    out = []
    if quota is not None and totals["disk_bytes"] > quota * 1e9:
        out.append(f"WARNING: the run needs {human_bytes(totals['disk_bytes'])} on disk, more than "
                   f"store.disk_quota_gb = {quota:g} GB ({totals['disk_bytes'] / (quota * 1e9):.0%} of it). Drop "
                   "layers or prompts, cap dataset.max_images, or scan first (scan.enabled) and extract only the "
                   "layers worth probing.")
    slow = rules[rules["hours_per_job"] > rules["requested_runtime_h"]]
    for _, row in slow.iterrows():
        out.append(f"NOTE: {row['rule']} {row['model']}: ~{row['hours_per_job']:.1f} h per job (assumed throughput) "
                   f"> the {row['requested_runtime_h']:.1f} h requested; jobs resume from checkpoints on retry "
                   "(runtime grows with the attempt), or raise store.parts for extraction.")
    return out


# --------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------

__all__ = ["Plan", "plan", "requested", "layer_bytes", "ASSUMPTIONS", "ADE20K_SIZES"]
