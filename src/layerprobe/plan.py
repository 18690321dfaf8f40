"""What a config will cost before anything runs: disk per feature store, RAM and GPU-hours per
rule, the disk-quota check, and what the layer scan saves against extracting every layer.

Bytes are exact: they follow the store layout of docs/DESIGN.md (fp16 tokens, one array per
layer and split, uncompressed), e.g. one LLaVA-7B LLM layer over ADE20K's training split is
20210 images x 576 tokens x 4096 dims x 2 B = 95.36 GB. GB means 10^9 bytes throughout.
RAM and runtime per job are what the rules request (`layerprobe.resources`, the single source).
Hours are estimates from the ASSUMED throughputs below: round numbers for one A100-class GPU,
not measurements. Replace them with your own (results/benchmarks/ after a first run).

CLI: `layerprobe plan --configfile config/config.yaml` (works without data or weights: when
`dataset.root` is absent the split sizes are ADE20K's, 20210 training + 2000 validation).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as lp_config
from . import resources
from .fingerprint import Fingerprint
from .scan.cost import host_stats_mb, plan_groups, select_keys
from .models.layers import CLS_SUFFIX
from .models.specs import ModelSpec, requested_keys
from .features.store import SPLITS, Layout, human_bytes

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

class _Wildcards:
    def __init__(self, model: str | None) -> None:
        self.model = model


def requested(rule: str, config: dict[str, Any], model: str | None = None, attempt: int = 1) -> dict[str, int]:
    """What one job of `rule` asks the scheduler for, exactly as the rules compute it: RAM and
    runtime from `layerprobe.resources`; the scan adds its ridge statistics when they live in
    host RAM (no GPU), as workflow/rules/scan.smk does."""
    wildcards = _Wildcards(model)
    mem = resources.mem_mb(rule, config, wildcards, attempt)
    gpus = resources.gpus(rule, config)
    if rule == "scan" and model in config["models"]:
        mem += host_stats_mb(config, model, gpus > 0)
    return {"mem_mb": int(mem), "runtime_min": int(resources.runtime_min(rule, config, wildcards, attempt)),
            "gpus": int(gpus)}


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
    return {"rule": rule, "model": model or "", "jobs": jobs, "mem_mb_per_job": want["mem_mb"],
            "gpus_per_job": want["gpus"], "hours_per_job": hours_per_job,
            "requested_runtime_h": want["runtime_min"] / 60, "hours": total, "gpu_hours": total * want["gpus"],
            "ram_gb_hours": total * want["mem_mb"] / 1024}


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
        longest, total = _probe_hours(lp_config.spec(config, store["model"]), model, sizes, epochs)
        seeds = len(config["probe"]["seeds"])  # every seed trains every probe again
        for cls in lp_config.cls_variants(model):  # a line per CLS variant; both read the one store
            rows.append(_rule_row("probe", config, store["model"] + (CLS_SUFFIX if cls else ""),
                                  int(store["layers"]) * seeds, longest, total * seeds))
    for _, row in scan.iterrows():
        model = config["models"][row["model"]]
        forward_s = (row["training_passes"] * sizes["training"] + sizes["validation"]) / images_per_s(lp_config.spec(config, row["model"]), model)
        rows.append(_rule_row("scan", config, row["model"], 1, (forward_s + row["gram_tflop"] / ASSUMED_GRAM_TFLOPS)
                              / 3600))
    return _merge_models(pd.DataFrame(rows))


def _probe_hours(spec: ModelSpec, model: dict[str, Any], sizes: dict[str, int], epochs: int) -> tuple[float, float]:
    """(longest job, all jobs) in hours: every epoch streams the training split of one layer and
    scores its validation split; the loader is IO-bound, so time follows the layer's bytes."""
    images = sum(sizes.values())
    hours = [epochs * layer_bytes(spec, k, images) / (ASSUMED_READ_GB_PER_S * 1e9) / 3600
             for k in requested_keys(model)]
    return max(hours), sum(hours)


def _merge_models(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, model): prompts of the same model add jobs, not rows."""
    keys = ["rule", "model", "mem_mb_per_job", "gpus_per_job", "requested_runtime_h"]
    merged = rows.groupby(keys, sort=False, as_index=False).agg(
        jobs=("jobs", "sum"), hours_per_job=("hours_per_job", "max"), hours=("hours", "sum"),
        gpu_hours=("gpu_hours", "sum"), ram_gb_hours=("ram_gb_hours", "sum"))
    return merged[["rule", "model", "jobs", "mem_mb_per_job", "gpus_per_job", "requested_runtime_h",
                   "hours_per_job", "hours", "gpu_hours", "ram_gb_hours"]]


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
              "scan_full_bytes": float(scan["full_extraction_bytes"].sum()),
              "scan_saved_bytes": float(scan["bytes_saved_beyond_probed"].sum())}
    totals["disk_bytes"] = totals["feature_bytes"] + totals["data_bytes"]
    quota = config["store"]["disk_quota_gb"]
    return Plan(sizes, source, stores, data, rules, scan, totals, quota, _warnings(quota, totals, rules))


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

def _text_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows] if r) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [line(header), rule, *[line(r) if r else rule for r in rows]]


def _hours(value: float) -> str:
    """Hours for sums (GPU-hours): two decimals below 10, whole hours above."""
    if value == 0:
        return "0"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _duration(hours: float) -> str:
    """One job's expected time: minutes below an hour, hours above."""
    minutes = hours * 60
    if minutes < 1:
        return "< 1 min"
    return f"{minutes:.0f} min" if minutes < 60 else f"{hours:.1f} h"


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_plan(result: Plan) -> str:
    """A plain-text plan for the terminal."""
    t = result.totals
    n = sum(result.sizes.values())
    lines = [f"Images: {result.sizes['training']} training + {result.sizes['validation']} validation = {n} "
             f"({result.size_source}; dataset.max_images applied)",
             "Bytes: fp16, per layer images x tokens x dim x 2 B (+ images x dim x 2 B for a CLS array), plus the "
             "uint8 labels; GB = 10^9 B", "",
             "Feature stores on disk (results/features/{model}/{prompt}.zarr)"]
    rows = [[r.model, r.prompt, str(r.layers), f"{r.tokens} x {r.dim}", human_bytes(r.largest_layer_training_bytes),
             human_bytes(r.training_bytes), human_bytes(r.validation_bytes), human_bytes(r.bytes)]
            for r in result.stores.itertuples()]
    rows += [[], ["total", "", str(int(result.stores["layers"].sum())), "", "", "",
                  "", human_bytes(t["feature_bytes"])]]
    lines += _text_table(["model", "prompt", "layers", "tokens x dim", "1 layer, training", "training",
                          "validation", "store"], rows, {2, 4, 5, 6, 7})
    data = ", ".join(f"{r.resolution} px{' pad' if r.geometry == 'pad' else ''} {human_bytes(r.bytes)}"
                     for r in result.data.itertuples())
    lines += [f"Preprocessed data stores (uint8 images + labels, results/data/): {data}", "",
              "Per rule: RAM, GPUs and runtime each job requests (layerprobe.resources); hours expected from the "
              "assumed throughputs below"]
    rows = [[r.rule, r.model, str(r.jobs), _gb(r.mem_mb_per_job), str(r.gpus_per_job),
             f"{r.requested_runtime_h:g} h", _duration(r.hours_per_job), _hours(r.hours), _hours(r.gpu_hours),
             f"{r.ram_gb_hours:.1f}"] for r in result.rules.itertuples()]
    rows += [[], ["total", "", str(int(t["jobs"])), "", "", "", "", _hours(t["job_hours"]), _hours(t["gpu_hours"]),
                  f"{t['ram_gb_hours']:.1f}"]]
    lines += _text_table(["rule", "model", "jobs", "RAM/job", "GPUs/job", "runtime asked", "expected/job",
                          "job-hours", "GPU-hours", "RAM GB-hours"], rows, {2, 3, 4, 5, 6, 7, 8, 9})
    if not result.scan.empty:
        lines += ["", "Layer scan vs full extraction (the scan fits ridge probes while the model runs and writes one "
                  "CSV per store, no features)"]
        rows = [[r.model, r.prompt, str(r.scanned_layers), str(r.also_probed), human_bytes(r.full_extraction_bytes),
                 human_bytes(r.probed_bytes), human_bytes(r.bytes_saved_beyond_probed), str(r.training_passes)]
                for r in result.scan.itertuples()]
        rows += [[], ["total", "", "", "", human_bytes(t["scan_full_bytes"]), "",
                      human_bytes(t["scan_saved_bytes"]), ""]]
        lines += _text_table(["model", "prompt", "scanned", "probed", "extract all scanned", "extracted for probes",
                              "saved", "training passes"], rows, {2, 3, 4, 5, 6, 7})
    lines += ["", f"Total disk: {human_bytes(t['disk_bytes'])} (features {human_bytes(t['feature_bytes'])} + "
              f"preprocessed data {human_bytes(t['data_bytes'])})"
              + (f" of store.disk_quota_gb = {result.quota_gb:g} GB ({t['disk_bytes'] / (result.quota_gb * 1e9):.0%})"
                 if result.quota_gb else " (no store.disk_quota_gb set)"),
              f"Total GPU-hours: {_hours(t['gpu_hours'])}; job-hours {_hours(t['job_hours'])}; requested RAM x time "
              f"{t['ram_gb_hours']:.0f} GB-hours"]
    if not result.scan.empty:
        lines.append(f"Layer scan: extracting every scanned layer would take {human_bytes(t['scan_full_bytes'])}; "
                     f"the scan stores none of it, saving {human_bytes(t['scan_saved_bytes'])} beyond the layers "
                     "extracted for the probes anyway.")
    lines += ["", "Assumed throughputs (edit layerprobe/plan.py; not measured):"]
    lines += [f"  {name}: {text}" for name, text in ASSUMPTIONS]
    if result.warnings:
        lines += [""] + result.warnings
    return "\n".join(lines)


def summary(config: dict[str, Any]) -> str:
    """A few lines for a Snakemake dry run (cheap: arithmetic only, no data read). Never raises:
    a dry run must not fail because of its summary."""
    try:
        result = plan(config)
    except Exception as err:  # noqa: BLE001 - the summary is informational
        return f"layerprobe plan: not available ({type(err).__name__}: {err})"
    t = result.totals
    quota = (f" of {result.quota_gb:g} GB quota ({t['disk_bytes'] / (result.quota_gb * 1e9):.0%})"
             if result.quota_gb else "")
    lines = [f"layerprobe plan: {len(result.stores)} feature store(s), {human_bytes(t['feature_bytes'])} of features "
             f"+ {human_bytes(t['data_bytes'])} preprocessed data = {human_bytes(t['disk_bytes'])} on disk{quota}; "
             f"~{_hours(t['gpu_hours'])} GPU-hours (assumed throughputs; images: {result.size_source}).",
             "  Details: layerprobe plan --configfile <this config>"]
    return "\n".join(lines + [f"  {w}" for w in result.warnings if w.startswith("WARNING")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layerprobe plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", required=True, type=Path, help="the workflow config (e.g. config/config.yaml)")
    parser.add_argument("--training", type=int, help="training images (default: counted, or ADE20K's 20210)")
    parser.add_argument("--validation", type=int, help="validation images (default: counted, or ADE20K's 2000)")
    args = parser.parse_args(argv)
    try:
        config = lp_config.load(args.configfile)
    except (OSError, lp_config.ConfigError) as err:
        parser.exit(2, f"layerprobe plan: invalid config {args.configfile}: {err}\n")
    given = None
    if args.training is not None or args.validation is not None:
        given = {"training": ADE20K_SIZES["training"] if args.training is None else args.training,
                 "validation": ADE20K_SIZES["validation"] if args.validation is None else args.validation}
    result = plan(config, given)
    print(f"layerprobe plan for {args.configfile}\n")
    print(format_plan(result))
    return 0


__all__ = ["Plan", "plan", "format_plan", "summary", "requested", "layer_bytes", "main"]
