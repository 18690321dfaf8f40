"""The differences the report states, with their paired intervals: each prompt against the
model's general prompt, the oracle fill against its controls, the best layer; and the best and
worst classes of a probe. Numbers only: the figures draw them, the tables list them.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .. import config as lp_config
from ..probing.intervals import Interval
from .collect import Results, Store


def best_row(frame: pd.DataFrame, column: str = "miou") -> pd.Series | None:
    valid = frame.dropna(subset=[column])
    return None if valid.empty else valid.loc[valid[column].idxmax()]


def prompt_deltas(results: Results) -> pd.DataFrame:
    """Per model with several prompts: mIoU of each other prompt minus the general prompt, per
    layer. The general prompt is the first one without a {category} placeholder (else the first)."""
    rows = []
    for model, cfg in results.config["models"].items():
        prompts = lp_config.prompt_ids(cfg) if cfg.get("prompts") else []
        if len(prompts) < 2:
            continue
        base = general_prompt(cfg)
        for prompt in [p for p in prompts if p != base]:
            rows += _delta_rows(results, model, base, prompt)
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def _delta_rows(results: Results, model: str, base: str, prompt: str) -> list[dict[str, Any]]:
    """mIoU(prompt) − mIoU(base) per layer both probed, forward order, with the paired interval."""
    frame = results.probes[(results.probes["model"] == model) & results.probes["prompt"].isin([base, prompt])]
    wide = frame.pivot(index="layer", columns="prompt", values="miou")
    if base not in wide or prompt not in wide:
        return []
    rows = []
    for layer in frame.drop_duplicates("layer").sort_values("x")["layer"]:
        delta = wide.at[layer, prompt] - wide.at[layer, base]
        if math.isnan(delta):
            continue
        interval = results.paired((model, base, layer), (model, prompt, layer))
        rows.append({"model": model, "prompt": prompt, "base": base, "layer": layer, "delta": delta,
                     **interval_columns(interval), "seed_deltas": _seed_deltas(results, model, base, prompt, layer),
                     "segment": results.axis.segment(model, layer), "tick": results.axis.tick_label(model, layer)})
    return rows


DELTA_COLUMNS = ["model", "prompt", "base", "layer", "delta", "low", "high", "significant", "seed_deltas", "segment",
                 "tick"]


def _seed_deltas(results: Results, model: str, base: str, prompt: str, layer: str) -> list[float]:
    """prompt − base per probe seed (same seed on both sides), for every seed both have."""
    runs = results.seed_runs
    if runs.empty:
        return []
    here = runs[(runs["model"] == model) & (runs["layer"] == layer)]
    wide = here.pivot_table(index="seed", columns="prompt", values="miou")
    if base not in wide or prompt not in wide:
        return []
    return [float(v) for v in (wide[prompt] - wide[base]).dropna()]


def interval_columns(interval: Interval | None) -> dict[str, Any]:
    """low/high of a paired difference and whether it excludes 0 (no counts: NaN, not significant)."""
    if interval is None:
        return {"low": float("nan"), "high": float("nan"), "significant": False}
    return {"low": interval.low, "high": interval.high, "significant": interval.significant}


def oracle_deltas(results: Results) -> pd.DataFrame:
    """Per `{category}` prompt listed with both its oracle (`dominant`) and its `shuffled` control:
    oracle minus control per layer, paired over the same images: what the correct class adds."""
    rows = []
    for model, cfg in results.config["models"].items():
        stores = lp_config.prompt_ids(cfg) if cfg.get("prompts") else []
        for prompt in stores:
            control = lp_config.store_id(prompt, "shuffled")
            if lp_config.store_fill(cfg, prompt) == "dominant" and control in stores:
                rows += _delta_rows(results, model, control, prompt)
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def general_prompt(cfg: dict[str, Any]) -> str:
    prompts = cfg.get("prompts", [])
    general = [p["id"] for p in prompts if "{category}" not in p["text"]]
    return (general or [p["id"] for p in prompts])[0]


def best_worst_classes(results: Results, store: Store, classes: list[int], n: int = 5) -> dict[str, Any]:
    """At the store's best layer: the n best and n worst classes among those present."""
    probes = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    best = best_row(probes)
    if best is None or store not in results.per_class:
        return {"layer": None, "best": [], "worst": []}
    row = results.per_class[store].loc[best["layer"]].iloc[classes].dropna().sort_values(ascending=False)
    pairs = [(str(name), float(v)) for name, v in row.items()]
    n = min(n, max(1, len(pairs) // 2))  # no class in both lists
    return {"layer": best["layer"], "best": pairs[:n], "worst": pairs[::-1][:n]}
