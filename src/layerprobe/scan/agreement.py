"""Agreement of the layer scan with the trained probes: do both rank the layers alike?

Kept apart from `scan` (which needs torch) so that readers of result tables, such as the
report, can use it with numpy and pandas alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def rank_agreement(scan: pd.DataFrame, probes: pd.DataFrame) -> float:
    """Spearman correlation of per-layer mIoU between the scan and the probes.

    Uses the (model, prompt, layer) rows both contain (filter both frames first for a
    per-model figure). NaN when fewer than 2 common layers or either side is constant.
    """
    on = ["model", "prompt", "layer"]
    both = scan[on + ["miou"]].merge(probes[on + ["miou"]], on=on, suffixes=("_scan", "_probe")).dropna()
    if len(both) < 2:
        return float("nan")
    a = _ranks(both["miou_scan"].to_numpy(dtype=np.float64))
    b = _ranks(both["miou_probe"].to_numpy(dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
