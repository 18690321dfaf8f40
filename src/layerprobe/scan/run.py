"""Layer scan: rank every layer without storing features, with closed-form ridge probes.

While the frozen model runs over the training split, every requested layer accumulates the
sufficient statistics of a ridge regression from a patch token to its patch's label distribution
(`ridge.RidgeStats`). One eigendecomposition per layer then gives the ridge solution for a whole
grid of penalties at once. Scores are the probes' mIoU (logits on the token grid -> bilinear
upsampling to label size -> argmax -> `SegmentationMeter`, computed exactly by
`upsample.UpsampleArgmax`).

The penalty is chosen without looking at the validation split: a seeded share of the training
images (`holdout_split`) is held out of the statistics, every layer x penalty is scored on it,
each layer keeps its best penalty, and only then is the validation split scored, once per layer
with that penalty. So the reported validation mIoU is not the maximum over a grid of it.
Nothing but the result table is written. The scan fits patch tokens only (no CLS): the table's
`variant` says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..models.backbones.base import Backbone
from ..models.layers import sort_keys
from ..probing.metrics import SegmentationMeter
from ..probing.upsample import CellLabels, UpsampleArgmax, count_sparse
from ..progress import progress
from .cost import NUM_CLASSES, plan_groups, stats_bytes
from .ridge import RidgeStats, token_label_distribution

log = logging.getLogger("layerprobe.scan")

# miou/acc: validation, at best_lambda; holdout_miou: the held-out training images that chose it.
COLUMNS = ["model", "prompt", "layer", "variant", "best_lambda", "miou", "acc", "holdout_miou"]
VARIANT = "patch"  # the probe variant the scan fits: patch tokens, no CLS concatenated
# Gets (split, the batch's uint8 labels (B, H, W), their data-store rows (B,)) and returns one
# prompt per image ({category} filled by row, as extraction fills it: `prompts.prompt_filler`).
PromptsFn = Callable[[str, np.ndarray, np.ndarray], list[str]]
# A solved probe per layer for scoring: weights (L, D, K), bias (L, 1, K), class ids (K,).
Head = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------

def _batches(data: Any, split: str, rows: Sequence[int] | None,
             batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(images, labels, data-store rows, pad boxes or None) batches; reads whole Zarr chunks at a
    time so none is decoded twice."""
    images, labels = data[f"{split}/images"], data[f"{split}/labels"]
    boxes = np.asarray(data[f"{split}/boxes"][:]) if f"{split}/boxes" in data else None
    order = np.arange(images.shape[0]) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
    chunk = int(images.chunks[0])
    block = max(batch_size, math.ceil(chunk / batch_size) * batch_size)
    for start in range(0, len(order), block):
        idx = order[start:start + block]
        if idx[-1] - idx[0] + 1 == len(idx):  # contiguous: a plain slice is much cheaper
            im, lab = images[int(idx[0]):int(idx[-1]) + 1], labels[int(idx[0]):int(idx[-1]) + 1]
        else:
            im, lab = images.get_orthogonal_selection((idx,)), labels.get_orthogonal_selection((idx,))
        for b in range(0, len(idx), batch_size):
            chosen = idx[b:b + batch_size]
            yield im[b:b + batch_size], lab[b:b + batch_size], chosen, None if boxes is None else boxes[chosen]


def _count(data: Any, split: str, rows: Sequence[int] | None) -> int:
    return int(data[f"{split}/images"].shape[0]) if rows is None else len(rows)


def _extract(backbone: Backbone, split: str, rows: np.ndarray, images: np.ndarray, labels: np.ndarray,
             prompts_fn: PromptsFn | None, keys: list[str], boxes: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    prompts = prompts_fn(split, labels, rows) if prompts_fn is not None else None
    padding = {} if boxes is None else {"boxes": torch.from_numpy(boxes)}  # pad geometry only
    tokens, _ = backbone.extract(torch.from_numpy(np.ascontiguousarray(images)), prompts, keys, **padding)
    return tokens


def fit_pass(backbone: Backbone, data: Any, rows: Sequence[int] | None, keys: list[str], dims: dict[str, int],
             prompts_fn: PromptsFn | None, batch_size: int, num_classes: int, device: torch.device,
             desc: str) -> dict[str, RidgeStats]:
    """One pass over the training split: ridge statistics of every key (one forward per batch)."""
    workspace: dict[str, torch.Tensor] = {}  # per-batch scratch, shared by all layers
    stats = {k: RidgeStats(dims[k], num_classes, device, workspace) for k in keys}
    total = math.ceil(_count(data, "training", rows) / batch_size)
    for images, labels, batch_rows, boxes in progress(_batches(data, "training", rows, batch_size), desc=desc,
                                                      total=total, unit="batch"):
        y, mask = token_label_distribution(labels, backbone.grid, num_classes)
        tokens = _extract(backbone, "training", batch_rows, images, labels, prompts_fn, keys, boxes)
        everything = bool(mask.all())  # the usual case: no copy of the features
        y = y.flatten(0, 1) if everything else y[mask]
        classes = torch.nonzero(y.sum(0) > 0).squeeze(1)  # shared by every layer
        y, classes = y.index_select(1, classes).to(device), classes.to(device)
        for key in keys:
            stats[key].update(tokens[key] if everything else tokens[key][mask], y, classes)
    return stats


def score_pass(backbone: Backbone, data: Any, rows: Sequence[int] | None, heads: dict[str, Head],
               prompts_fn: PromptsFn | None, batch_size: int, num_classes: int, device: torch.device,
               desc: str, split: str = "validation") -> dict[str, list[SegmentationMeter]]:
    """One pass over `split` (its `rows`) scoring every key x lambda of the solved heads.

    One layer at a time: its logits for all lambdas (a few MB) stay in cache; stacking layers
    into bigger calls was measured slower on CPU.
    """
    keys = list(heads)
    n_lambdas = heads[keys[0]][0].shape[0]
    meters = {k: [SegmentationMeter(num_classes) for _ in range(n_lambdas)] for k in keys}
    g = backbone.grid
    upsample: UpsampleArgmax | None = None
    total = math.ceil(_count(data, split, rows) / batch_size)
    batches = _batches(data, split, rows, batch_size)
    for images, labels, batch_rows, boxes in progress(batches, desc=desc, total=total, unit="batch"):
        if upsample is None:
            upsample = UpsampleArgmax(g, tuple(labels.shape[1:]), device)
        tokens = _extract(backbone, split, batch_rows, images, labels, prompts_fn, keys, boxes)
        cell_labels = CellLabels(torch.from_numpy(np.ascontiguousarray(labels)).to(device), upsample, num_classes,
                                 meters[keys[0]][0].ignore)
        for key in keys:
            pred = upsample.sparse(_logits(heads[key], tokens[key].to(device), g))
            count_sparse(meters[key], pred, heads[key][2], cell_labels)
    return meters


def _logits(head: Head, tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """tokens (B, T, D) -> logits (L*B, grid, grid, K) for every lambda, lambda-major."""
    weight, bias, classes = head  # (L, D, K), (L, 1, K), (K,)
    b = len(tokens)
    x = tokens.reshape(1, b * grid * grid, -1).expand(len(weight), -1, -1)
    # (L, B*g*g, K) is already the channels-last (L*B, g, g, K) layout the upsampler wants.
    return torch.baddbmm(bias, x, weight).view(len(weight) * b, grid, grid, len(classes))


def holdout_split(rows: Sequence[int] | None, n_rows: int, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of the training rows in use (`rows`, or all `n_rows`), both sorted.

    Which positions are held out depends on (number of rows in use, fraction, seed) only:
    round(fraction * n), at least 1 and leaving at least 1 to fit on.
    """
    in_use = np.arange(n_rows) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
    n = len(in_use)
    if not 0 < fraction < 1:
        raise ValueError(f"scan.holdout_fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"scan.holdout_fraction: the scan chooses lambda on held-out training images and fits on "
                         f"the others, so it needs at least 2 training images; it has {n}")
    size = min(n - 1, max(1, round(fraction * n)))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:size]] = True
    return in_use[~held], in_use[held]


def run_scan(backbone: Backbone, data_group: Any, split_rows: dict[str, Sequence[int]] | None, keys: list[str],
             prompts_fn: PromptsFn | None, lambdas: Sequence[float], batch_size: int, *, prompt: str = "none",
             num_classes: int = NUM_CLASSES, max_stats_bytes: int | None = None,
             device: str | torch.device = "cpu", holdout_fraction: float = 0.1,
             holdout_seed: int = 0) -> pd.DataFrame:
    """Rank layers: fit on most training images, choose lambda on the rest, score validation once.

    split_rows: rows per split of the data store to use (None: all); the hold-out
    (`holdout_split`, the config's `scan.holdout_*`) is drawn from the training rows in use.
    Returns one row per layer with columns model, prompt, layer, variant ("patch": the probe
    without CLS), best_lambda (best held-out mIoU, the smallest on ties), miou and acc (validation,
    at best_lambda), holdout_miou. `df.attrs` (plain data, so frames still concatenate) holds
    `grid`: records layer, lambda, holdout_miou, holdout_acc for every lambda (held-out training
    images, never validation), the wall time per phase (`seconds`) and each layer's absolute
    penalty per unit lambda (`lambda_scale`).
    """
    device = torch.device(device)
    keys = sort_keys(list(keys))
    backbone.check_keys(keys)
    lambdas = sorted(float(x) for x in lambdas)
    dims = {k: backbone.dims()[k] for k in keys}
    rows = dict(split_rows or {})
    fit_rows, held_rows = holdout_split(rows.get("training"), _count(data_group, "training", None),
                                        holdout_fraction, holdout_seed)
    groups = plan_groups(keys, dims, max_stats_bytes, num_classes)
    _log_plan(backbone, keys, dims, groups, max_stats_bytes, num_classes, rows)
    log.info("lambda chosen on %d held-out training images (scan.holdout_fraction=%g, holdout_seed=%d); "
             "statistics fitted on the other %d", len(held_rows), holdout_fraction, holdout_seed, len(fit_rows))
    seconds = {"fit": 0.0, "solve": 0.0, "holdout": 0.0, "score": 0.0}
    name = f"scan {backbone.name}/{prompt}"
    heads, scales = _fit_heads(backbone, data_group, fit_rows, groups, dims, prompts_fn, lambdas, batch_size,
                               num_classes, device, name, seconds)
    t0 = time.perf_counter()
    held = score_pass(backbone, data_group, held_rows, heads, prompts_fn, batch_size, num_classes, device,
                      f"{name} hold-out", split="training")
    best = {k: _best(held[k]) for k in keys}
    t1 = time.perf_counter()
    chosen = {k: _at(heads[k], best[k]) for k in keys}  # validation scores one lambda per layer
    val = score_pass(backbone, data_group, rows.get("validation"), chosen, prompts_fn, batch_size, num_classes,
                     device, f"{name} score")
    seconds["holdout"], seconds["score"] = t1 - t0, time.perf_counter() - t1
    table, grid = _summarise(backbone.name, prompt, keys, lambdas, best, held, val)
    table.attrs.update({"grid": grid.to_dict("records"), "seconds": seconds, "lambda_scale": scales})
    log.info("%s: %s", name, {k: round(v, 2) for k, v in seconds.items()})
    return table


def _fit_heads(backbone: Backbone, data: Any, rows: Sequence[int], groups: list[list[str]], dims: dict[str, int],
               prompts_fn: PromptsFn | None, lambdas: list[float], batch_size: int, num_classes: int,
               device: torch.device, name: str, seconds: dict[str, float]) -> tuple[dict[str, Head], dict[str, float]]:
    """Ridge statistics on `rows`, one training pass per group of layers, solved for every lambda."""
    heads: dict[str, Head] = {}
    scales: dict[str, float] = {}
    for i, group in enumerate(groups):
        t0 = time.perf_counter()
        label = f"{name} fit" + (f" group {i + 1}/{len(groups)}" if len(groups) > 1 else "")
        stats = fit_pass(backbone, data, rows, group, dims, prompts_fn, batch_size, num_classes, device, label)
        t1 = time.perf_counter()
        for key in group:
            heads[key], scales[key] = _solve(stats.pop(key), lambdas)
        seconds["fit"] += t1 - t0
        seconds["solve"] += time.perf_counter() - t1
        del stats
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return heads, scales


def _best(meters: list[SegmentationMeter]) -> int:
    """Index of the best mIoU; the first (the smallest lambda) on ties; NaN loses to any number."""
    mious = np.array([m.miou() for m in meters])
    return int(np.argmax(np.where(np.isnan(mious), -np.inf, mious)))


def _at(head: Head, i: int) -> Head:
    """The head of lambda number i alone (classes kept: dropping duplicates stays exact)."""
    weight, bias, classes = head
    return weight[i:i + 1], bias[i:i + 1], classes


def _solve(stats: RidgeStats, lambdas: list[float]) -> tuple[Head, float]:
    """fp32 heads for scoring, restricted to classes that can win an argmax.

    A class whose weights and bias equal those of a lower class (e.g. every class absent from
    the training split: all zero) has the same logit everywhere, so argmax, which takes the
    first maximum, never picks it: dropping it is exact and makes scoring cheaper.
    """
    weights, bias = stats.solve(lambdas)
    c = bias.shape[1]
    columns = torch.cat([weights.permute(2, 0, 1).reshape(c, -1), bias.T], 1)
    _, inverse = torch.unique(columns, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), c, dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(c, device=inverse.device), reduce="amin")
    keep = torch.sort(first).values
    head = (weights[..., keep].float().contiguous(), bias[:, keep].float().unsqueeze(1).contiguous(), keep)
    return head, stats.lambda_scale()


def _summarise(model: str, prompt: str, keys: list[str], lambdas: list[float], best: dict[str, int],
               held: dict[str, list[SegmentationMeter]],
               val: dict[str, list[SegmentationMeter]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table (validation at each layer's chosen lambda) and the held-out grid it was chosen on."""
    records, grid, edge = [], [], []
    for key in keys:
        mious = [m.miou() for m in held[key]]
        if len(lambdas) > 1 and best[key] in (0, len(lambdas) - 1):
            edge.append(key)
        records.append({"model": model, "prompt": prompt, "layer": key, "variant": VARIANT,
                        "best_lambda": lambdas[best[key]], "miou": val[key][0].miou(),
                        "acc": val[key][0].accuracy(), "holdout_miou": mious[best[key]]})
        grid += [{"layer": key, "lambda": lam, "holdout_miou": mi, "holdout_acc": m.accuracy()}
                 for lam, mi, m in zip(lambdas, mious, held[key])]
    if edge:
        log.warning("best lambda at the edge of the grid %s for %s: a wider scan.lambdas may score higher",
                    lambdas, edge)
    grid_df = pd.DataFrame(grid)
    log.info("held-out training mIoU per layer x lambda:\n%s",
             grid_df.pivot(index="layer", columns="lambda", values="holdout_miou")
             .reindex(keys).to_string(float_format=lambda v: f"{v:.4f}"))
    return pd.DataFrame(records, columns=COLUMNS), grid_df


def _log_plan(backbone: Backbone, keys: list[str], dims: dict[str, int], groups: list[list[str]],
              max_stats_bytes: int | None, num_classes: int, rows: dict[str, Sequence[int]]) -> None:
    total = stats_bytes([dims[k] for k in keys], num_classes)
    log.info("scan %s: %d layers %s, ridge statistics %.1f MiB in total", backbone.name, len(keys),
             f"{keys[0]}..{keys[-1]}", total / 2**20)
    if len(groups) > 1:
        log.info("statistics exceed max_stats_bytes=%.1f MiB: the training forward runs once per group "
                 "of layers (%d groups: %s)", max_stats_bytes / 2**20, len(groups),
                 ", ".join(f"{g[0]}..{g[-1]}" for g in groups))
    if rows:
        log.info("rows used: %s", {s: len(r) for s, r in rows.items()})


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------

def prompts_filler(text: str | None, class_names: list[str] | None, fill: str | None = "dominant", seed: int = 0,
                   data: Any = None) -> PromptsFn | None:
    """The prompt hook for a prompt template and its category fill (`config.store_fill`), the
    same as extraction's; None for prompt-free models (CLIP). `data`: the data store (the
    shuffled fill takes donors from the whole split)."""
    if text is None:
        return None
    from ..models.prompts import prompt_filler  # imported lazily: only LLaVA needs it

    return prompt_filler(text, fill, class_names or [], seed, data)
