"""The report's tables as DataFrames: summary per (model, prompt), scan agreement, resources."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import billing as lp_billing
from .. import config as lp_config
from ..formatting import human_bytes
from ..scan.agreement import rank_agreement
from .collect import Results, Store
from .deltas import interval_columns, prompt_deltas
from .style import IDENTICAL, delta_colour, store_label


def _store_rows(results: Results, store: Store) -> pd.DataFrame:
    probes = results.probes
    return probes[(probes["model"] == store[0]) & (probes["prompt"] == store[1])].sort_values("x")


@dataclass(frozen=True)
class Estimate:
    """A table cell: a value with its 95% interval, e.g. '0.3012 [0.2950, 0.3071]'."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "–"
        bounds = "" if math.isnan(self.low) else f" [{self.low:.4f}, {self.high:.4f}]"
        return f"{self.value:.4f}{bounds}"


@dataclass(frozen=True)
class Difference:
    """A table cell: a paired difference, its 95% interval and, optionally, what it compares to."""

    delta: float
    low: float
    high: float
    significant: bool
    versus: str = ""

    def __str__(self) -> str:
        if math.isnan(self.delta):
            return "–"
        bounds = "" if math.isnan(self.low) else f" [{self.low:+.4f}, {self.high:+.4f}]"
        verdict = "" if self.significant or abs(self.delta) < IDENTICAL else " n.s."
        return f"{self.delta:+.4f}{bounds}{verdict}" + (f" vs {self.versus}" if self.versus else "")

    @property
    def colour(self) -> str:
        return delta_colour(self.delta, self.significant)


def summary(results: Results) -> pd.DataFrame:
    """One row per (model, prompt): its best layer by validation mIoU (with its interval), how
    much it beats the next best layer and the general prompt (paired intervals), and training."""
    deltas = prompt_deltas(results).set_index(["model", "prompt", "layer"])
    rows = []
    for store in results.store_list():
        frame = _store_rows(results, store).dropna(subset=["miou"])
        if frame.empty:
            continue
        ranked = frame.sort_values("miou", ascending=False, kind="stable")
        best = ranked.iloc[0]
        key = (store[0], store[1], best["layer"])
        prompt_delta = (Difference(*deltas.loc[key, ["delta", "low", "high", "significant"]])
                        if key in deltas.index else None)
        still = best["best_epoch"] == best["epochs"]
        rows.append({"model / prompt": store_label(store, results.config), "best layer": best["layer"],
                     "best mIoU [95% CI]": Estimate(best["miou"], best["miou_low"], best["miou_high"]),
                     "best − next best layer": next_layer_difference(results, store, ranked),
                     "pixel acc": best["acc"], "last layer mIoU": frame["miou"].iloc[-1],
                     "Δ vs general prompt": prompt_delta,
                     "best epoch": f"{int(best['best_epoch'])} / {int(best['epochs'])}" + (" (last: still improving?)"
                                                                                              if still else ""),
                     "layers probed": len(frame)})
        if results.probes["seeds"].max() > 1:
            rows[-1]["best layer over seeds (mean ± sd)"] = _seed_spread(best)
    return pd.DataFrame(rows)


def _seed_spread(row: pd.Series) -> str:
    if pd.isna(row["seeds"]) or row["seeds"] < 2:
        return "–"
    return f"{row['seed_mean']:.4f} ± {row['seed_sd']:.4f} ({int(row['seeds'])} seeds)"


def next_layer_difference(results: Results, store: Store, ranked: pd.DataFrame) -> Difference | None:
    """Best layer minus the runner-up, paired over the same validation images: is 'best' real?"""
    if len(ranked) < 2:
        return None
    best, runner_up = ranked.iloc[0], ranked.iloc[1]
    interval = results.paired((store[0], store[1], runner_up["layer"]), (store[0], store[1], best["layer"]))
    columns = interval_columns(interval)
    return Difference(best["miou"] - runner_up["miou"], columns["low"], columns["high"], columns["significant"],
                      runner_up["layer"])


def oracle_summary(results: Results, deltas: pd.DataFrame) -> pd.DataFrame:
    """Per oracle prompt: its best layer, and the oracle effect there (dominant − shuffled)."""
    rows = []
    for (model, prompt), part in deltas.groupby(["model", "prompt"], sort=False):
        frame = _store_rows(results, (model, prompt)).dropna(subset=["miou"])
        if frame.empty:
            continue
        best = frame.loc[frame["miou"].idxmax()]
        at = part[part["layer"] == best["layer"]]
        effect = (Difference(*at.iloc[0][["delta", "low", "high", "significant"]], versus=at.iloc[0]["base"])
                  if len(at) else None)
        rows.append({"model / prompt": store_label((model, prompt), results.config), "best layer": best["layer"],
                     "oracle mIoU [95% CI]": Estimate(best["miou"], best["miou_low"], best["miou_high"]),
                     "oracle effect at that layer (dominant − shuffled)": effect,
                     "layers where the oracle is significantly better":
                         f"{int((part['significant'] & (part['delta'] > 0)).sum())} / {len(part)}"})
    return pd.DataFrame(rows)


def probes_csv(results: Results) -> pd.DataFrame:
    """Every probe with its interval (the report writes it as probes.csv beside its figures)."""
    columns = ["model", "store_prompt", "probe", "prompt", "layer", "miou", "miou_low", "miou_high", "seeds",
               "seed_mean", "seed_sd", "acc", "best_epoch", "epochs"]
    return results.probes[columns].rename(columns={"prompt": "series"})


def scan_agreement(results: Results) -> pd.DataFrame:
    rows = []
    for store in scanned_stores(results):
        scan = results.scan[(results.scan["model"] == store[0]) & (results.scan["prompt"] == store[1])]
        probes = _store_rows(results, store)
        common = set(scan["layer"]) & set(probes["layer"])
        scan_best = scan.loc[scan["miou"].idxmax(), "layer"] if scan["miou"].notna().any() else ""
        probe_best = probes.loc[probes["miou"].idxmax(), "layer"] if probes["miou"].notna().any() else ""
        rows.append({"model / prompt": store_label(store, results.config), "Spearman ρ": rank_agreement(scan, probes),
                     "layers in both": len(common), "scanned layers": len(scan),
                     "scan's best layer": scan_best, "probe's best layer": probe_best,
                     "scan's best among probed": _best_among(scan, common)})
    return pd.DataFrame(rows)


def _best_among(scan: pd.DataFrame, layers: set[str]) -> str:
    part = scan[scan["layer"].isin(layers)].dropna(subset=["miou"])
    return "" if part.empty else str(part.loc[part["miou"].idxmax(), "layer"])


def scanned_stores(results: Results) -> list[Store]:
    seen = results.scan[["model", "prompt"]].drop_duplicates()
    return [(m, p) for m, p in seen.itertuples(index=False)]


RULE_ORDER = ["synthetic_dataset", "preprocess", "build_tiny_model", "prepare_store", "extract", "finalize_store",
              "scan", "probe", "report"]


def billed(bench: pd.DataFrame, config: dict[str, Any], at_peak: bool = False) -> pd.Series:
    """SLURM billing per benchmarked job (`layerprobe.billing`): as requested, or with its peak RSS
    in place of the requested memory (`at_peak`: what the job would have billed had it asked for
    what it used). NaN where a number is missing."""
    bill = lp_billing.from_config(config)

    def one(row: pd.Series) -> float:
        mem = row["max_rss"] if at_peak else row["mem_mb"]
        if any(pd.isna(v) for v in (row["cpus"], row["gpus"], mem)):
            return float("nan")
        return float(bill.job(int(row["cpus"]), math.ceil(mem), int(row["gpus"])))

    return bench.apply(one, axis=1) if len(bench) else pd.Series(dtype=float)


def resources_table(results: Results) -> pd.DataFrame:
    """Per rule: what was requested per job vs the measured peak RSS and wall time (worst job), and
    SLURM billing units requested vs used (peak RSS for the memory), per job and x wall hours."""
    bench = results.benchmarks
    if bench.empty:
        return pd.DataFrame()
    bench = bench.assign(billed=billed(bench, results.config), billed_peak=billed(bench, results.config, True))
    rows = []
    for rule, jobs in bench.groupby("rule", sort=False):
        peak = jobs["max_rss"].max()
        requested = jobs["mem_mb"].max()
        wall = jobs["s"].max()
        runtime = jobs["runtime_min"].min()
        rows.append({"rule": rule, "jobs": len(jobs), "GPUs/job": int(jobs["gpus"].max()),
                     "requested mem": _mb(requested), "peak RSS (max job)": _mb(peak),
                     "peak / requested": _ratio(peak, requested), "requested runtime": _minutes(runtime),
                     "wall time (max job)": _seconds(wall), "wall time (all jobs)": _seconds(jobs["s"].sum()),
                     "wall / requested": _ratio(wall / 60, runtime),
                     "billing/job requested": jobs["billed"].max(),
                     "billing/job at peak RSS": jobs["billed_peak"].max(),
                     "billing-hours requested": (jobs["billed"] * jobs["s"]).sum(min_count=1) / 3600,
                     "billing-hours at peak RSS": (jobs["billed_peak"] * jobs["s"]).sum(min_count=1) / 3600})
    order = {r: i for i, r in enumerate(RULE_ORDER)}
    return pd.DataFrame(rows).sort_values("rule", key=lambda s: s.map(lambda r: order.get(r, 99)), kind="stable")


def jobs_table(results: Results) -> pd.DataFrame:
    """Every benchmarked job, heaviest peak RSS first."""
    bench = results.benchmarks
    if bench.empty:
        return pd.DataFrame()
    bench = bench.sort_values("max_rss", ascending=False, na_position="last")
    return pd.DataFrame({"rule": bench["rule"], "job": bench["job"], "requested mem": bench["mem_mb"].map(_mb),
                         "peak RSS": bench["max_rss"].map(_mb),
                         "peak / requested": [_ratio(a, b) for a, b in zip(bench["max_rss"], bench["mem_mb"])],
                         "wall time": bench["s"].map(_seconds), "CPU time": bench["cpu_time"].map(_seconds)})


def _mb(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"


def _ratio(a: float, b: float) -> float:
    return float("nan") if not b or pd.isna(a) or pd.isna(b) else float(a) / float(b)


def _minutes(value: float) -> str:
    return "–" if pd.isna(value) else f"{int(value) // 60}:{int(value) % 60:02d} h"


def _seconds(value: float) -> str:
    if pd.isna(value):
        return "–"
    value = int(round(value))
    return f"{value // 3600}:{value % 3600 // 60:02d}:{value % 60:02d}"


def store_sizes(results: Results) -> pd.DataFrame:
    """Every store of the run (feature stores, then preprocessed data stores): size on disk now,
    beside what `layerprobe plan` computes for the same number of images."""
    from ..plan.estimates import data_rows, store_rows  # local: plan is only needed for this table

    rows = []
    config = results.config
    for row in results.stores.itertuples():
        images = {"training": int(row.training_images or 0), "validation": int(row.validation_images or 0)}
        one = {**config, "models": {row.model: config["models"][row.model]}}
        planned = store_rows(one, images)
        planned = planned[planned["prompt"] == row.prompt]["bytes"]
        measured = _disk_bytes(results, row.store)
        rows.append({"store": f"features/{row.model}/{row.prompt}.zarr", "layers": row.layers,
                     "images": f"{images['training']} + {images['validation']}",
                     "size on disk": measured if measured is not None else row.bytes,
                     "planned": float(planned.iloc[0]) if not planned.empty else np.nan})
    for name, manifest in sorted(results.data.items()):
        images = {s: int(manifest.get("images", {}).get(s, 0)) for s in ("training", "validation")}
        planned = data_rows({**config, "models": _models_at(config, manifest["resolution"])}, images)
        planned = planned[planned["store"] == name]["bytes"]
        rows.append({"store": f"data/{name}.zarr", "layers": np.nan,
                     "images": f"{images['training']} + {images['validation']}",
                     "size on disk": _disk_bytes(results, manifest.get("store")),
                     "planned": float(planned.sum()) if len(planned) else np.nan})
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    total = {"store": "total", "layers": np.nan, "images": "", "size on disk": out["size on disk"].sum(min_count=1),
             "planned": out["planned"].sum(min_count=1)}
    out = pd.concat([out, pd.DataFrame([total])], ignore_index=True)
    out["measured / planned"] = [_ratio(a, b) for a, b in zip(out["size on disk"], out["planned"])]
    for column in ("size on disk", "planned"):
        out[column] = [human_bytes(v) if not pd.isna(v) else "–" for v in out[column]]
    out["layers"] = [int(v) if not pd.isna(v) else "" for v in out["layers"]]
    return out


def _models_at(config: dict, res: int) -> dict:

    return {n: m for n, m in config["models"].items() if lp_config.spec(config, n).image_size == res}


def _disk_bytes(results: Results, store: str | None) -> float | None:
    """Bytes of every file under a store path (relative paths are relative to the run's workdir)."""
    if not store:
        return None
    path = Path(store)
    path = path if path.is_absolute() else results.workdir() / path
    if not path.exists():
        return None
    return float(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))


SCAN_MARGIN = 0.10  # scan mIoU above the trained probe's by more than this: the probe under-performs
GAP_MARGIN = 0.30  # final running train mIoU above test mIoU by more than this: over-fitting or an eval problem


def diagnostics(results: Results) -> list[str]:
    """Plain-language warnings a reader should see before trusting the headline figure."""
    out = []
    probes = results.probes.set_index(["model", "prompt", "layer"])["miou"]
    if not results.scan.empty:
        scan = results.scan.set_index(["model", "prompt", "layer"])["miou"]
        both = pd.concat({"scan": scan, "probe": probes}, axis=1, join="inner").dropna()
        worse = both[both["scan"] > both["probe"] + SCAN_MARGIN]
        if not worse.empty:
            listed = ", ".join(f"{store_label((m, p), results.config)} {k} ({r.probe:.2f} vs {r.scan:.2f})"
                               for (m, p, k), r in worse.iterrows())
            out.append(f"The closed-form layer scan beats the trained probe by more than {SCAN_MARGIN:g} mIoU on "
                       f"{len(worse)} layer(s): {listed}. A linear probe should do at least as well as a ridge fit "
                       "on the same features; check the probe's training (learning rate, epochs, feature scale, "
                       "BatchNorm) before reading these layers as uninformative.")
    deltas = prompt_deltas(results)
    fixed = deltas[deltas["layer"].map(_prompt_independent) & (deltas["delta"].abs() >= IDENTICAL)]
    if not fixed.empty:
        listed = ", ".join(f"{r.model} {r.layer} ({r.prompt} − {r.base}: {r.delta:+.4f})" for r in fixed.itertuples())
        out.append(f"Probes on prompt-independent features differ between prompts on {len(fixed)} layer(s): {listed}. "
                   "Vision-tower, projector and layer_00 image tokens are computed before the prompt can act, so "
                   "the stores hold the same features there; a difference means the probe's training or scoring "
                   "is not deterministic or depends on the store.")
    curves = results.curves
    if not curves.empty:
        last = curves.sort_values("epoch").groupby(["model", "prompt", "layer"]).tail(1)
        gap = last[last["running_train_miou"] - last["test_miou"] > GAP_MARGIN]
        if not gap.empty:
            listed = ", ".join(f"{store_label((r.model, r.prompt), results.config)} {r.layer} (running train "
                               f"{r.running_train_miou:.2f}, test {r.test_miou:.2f})" for r in gap.itertuples())
            out.append(f"Running train mIoU exceeds test mIoU by more than {GAP_MARGIN:g} at the last epoch on "
                       f"{len(gap)} probe(s): {listed}. Over-fitting, or train and test see differently scaled "
                       "features.")
    return out


def _prompt_independent(layer: str) -> bool:
    """LLaVA keys whose image-token rows come before the prompt can act (DESIGN.md: layer_00's
    image rows are the projector output)."""
    return layer.startswith("vision_") or layer in ("projector", "layer_00")
