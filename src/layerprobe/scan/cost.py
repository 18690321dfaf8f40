"""What a layer scan needs, known before any model runs (no torch: the DAG build and the plan use it).

Which layers a scan covers, the bytes of their ridge statistics (`ridge.RidgeStats`), how layers
are grouped under `scan.max_stats_mb`, and the host RAM a scan job adds to its model's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .. import config as lp_config
from ..models.layers import sort_keys

NUM_CLASSES = 150
log = logging.getLogger("layerprobe.scan")


def stats_nbytes(dim: int, num_classes: int = NUM_CLASSES) -> int:
    """Bytes of one layer's accumulators: float64 X^T X, X^T Y, sums; the float32 shift."""
    return 8 * (dim * dim + dim * num_classes + dim + num_classes) + 4 * dim


def stats_bytes(dims: list[int], num_classes: int = NUM_CLASSES) -> int:
    """Memory of the ridge statistics for layers of the given widths."""
    return sum(stats_nbytes(d, num_classes) for d in dims)


def plan_groups(keys: list[str], dims: dict[str, int], max_stats_bytes: int | None,
                num_classes: int = NUM_CLASSES) -> list[list[str]]:
    """Consecutive layers (forward order) whose statistics fit in max_stats_bytes together.

    Consecutive, because each group's forward stops after its deepest layer: the early groups
    then cost less than a full forward. A layer larger than the budget gets a group of its own.
    """
    if max_stats_bytes is None:
        return [list(keys)]
    groups: list[list[str]] = [[]]
    used = 0
    for key in keys:
        size = stats_nbytes(dims[key], num_classes)
        if groups[-1] and used + size > max_stats_bytes:
            groups.append([])
            used = 0
        groups[-1].append(key)
        used += size
    return groups


def select_keys(dims: dict[str, int], layers: str | list[str]) -> tuple[list[str], list[str]]:
    """(keys the model has, keys it lacks) for config `scan.layers`."""
    if layers == "all":
        return sort_keys(list(dims)), []
    return sort_keys([k for k in layers if k in dims]), [k for k in layers if k not in dims]


def scan_keys(dims: dict[str, int], layers: str | list[str]) -> list[str]:
    """Config `scan.layers`: "all" = every key of the model, else the listed keys it has."""
    keys, missing = select_keys(dims, layers)
    if missing:
        log.warning("scan.layers: this model has no %s; scanning the others", missing)
    if not keys:
        raise ValueError(f"config key scan.layers: none of {layers} exist in this model ({sorted(dims)})")
    return keys


def host_stats_mb(config: dict[str, Any], name: str, on_gpu: bool, batch_tokens: int | None = None) -> int:
    """Host RAM (MiB) the scan adds to a job beyond the model: the ridge statistics (capped by
    the optional `scan.max_stats_mb`), their per-batch scratch and the solved heads. Zero when
    they live on the GPU. For the rule's `resources` (no logging: runs at DAG build)."""
    if on_gpu:
        return 0
    settings = config["scan"]
    spec = lp_config.spec(config, name)
    keys, _ = select_keys(spec.dims(), settings["layers"])
    widths = [spec.dims()[k] for k in keys] or [spec.dim]
    stats = stats_bytes(widths)
    if settings.get("max_stats_mb") is not None:
        stats = min(stats, max(int(settings["max_stats_mb"] * 2**20), stats_bytes([max(widths)])))
    d = max(widths)
    tokens = batch_tokens or settings["batch_size"] * spec.tokens
    scratch = 4 * (tokens * d + d * d) + 12 * d * NUM_CLASSES
    heads = 4 * len(settings["lambdas"]) * NUM_CLASSES * sum(widths)
    return math.ceil((stats + scratch + heads) / 2**20)
