"""Layer scan: rank every layer without storing features, with closed-form ridge probes.

While the frozen model runs over the training split, every requested layer accumulates the
sufficient statistics of a ridge regression from a patch token to its patch's label distribution
(`RidgeStats`). One eigendecomposition per layer then gives the ridge solution for a whole grid
of penalties at once, and a second pass over the validation split scores every layer x penalty
with the probes' mIoU (logits on the token grid -> bilinear upsampling to label size -> argmax ->
`SegmentationMeter`). Nothing but the result table is written.

Penalty scale: `lambdas` are relative. For a layer with centred Gram matrix G = Xc^T Xc over n
tokens and width D, the absolute penalty is lambda * trace(G) / D, i.e. lambda times the mean
eigenvalue of G (= n x the mean per-feature variance). The fit is then invariant to rescaling a
layer's features and to the number of training tokens, so one grid fits every layer and model:
lambda = 1 shrinks a direction with average variance by half.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .backbones.base import Backbone
from .layers import sort_keys
from .metrics import SegmentationMeter
from .progress import progress

log = logging.getLogger("layerprobe.scan")

NUM_CLASSES = 150
COLUMNS = ["model", "prompt", "layer", "best_lambda", "miou", "acc"]
# Gets the batch's uint8 labels (B, H, W) and returns one prompt per image (e.g. {category} filled).
PromptsFn = Callable[[np.ndarray], list[str]]
# A solved probe per layer for scoring: weights (L, D, K), bias (L, 1, K), class ids (K,).
Head = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------

def token_label_distribution(labels: torch.Tensor | np.ndarray, grid: int,
                             num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch token, the fraction of its labelled pixels in each class.

    labels: uint8 (B, H, W); pixel (h, w) belongs to token (h * grid // H, w * grid // W), which
    is the model's patch when H = grid * patch. Ignore pixels (255, and any label >= num_classes)
    are dropped. Returns y float32 (B, grid*grid, C) and mask bool (B, grid*grid), False for
    tokens whose patch is entirely ignore (their y row is all zero).
    """
    labels = torch.as_tensor(labels).long()
    b, h, w = labels.shape
    c = num_classes
    rows = torch.arange(h, device=labels.device) * grid // h
    cols = torch.arange(w, device=labels.device) * grid // w
    token = (rows[:, None] * grid + cols[None, :]).expand(b, h, w)
    classes = torch.where(labels < c, labels, torch.full_like(labels, c))  # c = the dropped bin
    image = torch.arange(b, device=labels.device).view(b, 1, 1)
    flat = ((image * grid * grid + token) * (c + 1) + classes).reshape(-1)
    counts = torch.bincount(flat, minlength=b * grid * grid * (c + 1)).view(b, grid * grid, c + 1)[..., :c]
    total = counts.sum(-1)
    return (counts.float() / total.clamp(min=1).unsqueeze(-1).float()), total > 0


# --------------------------------------------------------------------------------------------
# Streaming ridge regression
# --------------------------------------------------------------------------------------------

class RidgeStats:
    """Sufficient statistics of a ridge regression x (D) -> y (C), accumulated batch by batch.

    Precision: each batch's products X^T X and X^T Y are computed in float32 (fast GEMM on any
    device; fp64 GEMM runs at 1/32-1/64 rate on consumer GPUs) and added into float64
    accumulators. A batch contributes only a few thousand tokens, so its fp32 sums are accurate
    to ~1e-5 relative at worst, while fp64 accumulation keeps the total from degrading over
    millions of tokens (an fp32 running sum stops registering a batch ~1e7x smaller than itself).
    (On Ampere+ GPUs, TF32 matmuls must stay off, PyTorch's default: 10-bit mantissas.)
    Before the products, x is shifted by the first batch's mean: LLM residual streams carry a
    few "massive activation" dimensions with means of hundreds, and the centred Gram matrix
    G = sum x x^T - n mean mean^T would otherwise be the difference of two huge numbers
    (catastrophic cancellation). With the shift, mean - shift is small and G stays accurate.

    Memory: the accumulators (`nbytes_for`) plus per-batch scratch of 4*(N*D + D*D) + 12*D*C
    bytes, which layers can share (`workspace`): reusing it rather than allocating fresh
    tensors every batch avoids page faults that cost more than the products on CPU.
    """

    def __init__(self, dim: int, num_classes: int = NUM_CLASSES, device: str | torch.device = "cpu",
                 workspace: dict[str, torch.Tensor] | None = None) -> None:
        self.dim, self.num_classes, self.device = dim, num_classes, torch.device(device)
        f64 = {"dtype": torch.float64, "device": self.device}
        self.n = 0
        self.shift = torch.zeros(dim, dtype=torch.float32, device=self.device)
        self.sum_x = torch.zeros(dim, **f64)
        self.sum_y = torch.zeros(num_classes, **f64)
        self.xtx = torch.zeros(dim, dim, **f64)
        self.xty = torch.zeros(dim, num_classes, **f64)
        self.workspace = {} if workspace is None else workspace

    @staticmethod
    def nbytes_for(dim: int, num_classes: int = NUM_CLASSES) -> int:
        """Bytes of the accumulators."""
        return 8 * (dim * dim + dim * num_classes + dim + num_classes) + 4 * dim

    def nbytes(self) -> int:
        tensors = (self.shift, self.sum_x, self.sum_y, self.xtx, self.xty)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _scratch(self, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self.workspace.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != self.device:
            buffer = self.workspace[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(*shape)

    def update(self, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor | None = None) -> None:
        """x (..., D) features and y (N, C) targets of the N labelled tokens of one batch.

        A batch holds few of the C classes (ADE20K: ~10 per image), so X^T Y is only computed for
        those: pass y as the (N, K) columns `classes` of the targets (the others are zero), or
        the full y and they are found here.
        """
        d = self.dim
        n = x.numel() // d
        if n == 0:
            return
        y = y.to(self.device, torch.float32)
        if classes is None:
            classes = torch.nonzero(y.sum(0) > 0).squeeze(1)
            y = y.index_select(1, classes)
        classes = classes.to(self.device)
        x = x.to(self.device, torch.float32)
        if self.n == 0:
            self.shift = x.reshape(n, d).mean(0)
        xs = self._scratch("x", n, d)
        torch.sub(x, self.shift, out=xs.view(x.shape))  # also flattens a strided x, without a copy
        self.n += n
        self.sum_x += xs.sum(0)
        self.xtx += torch.mm(xs.T, xs, out=self._scratch("xtx", d, d))  # fp32 product, fp64 sum
        self.sum_y.index_add_(0, classes, y.sum(0).double())
        xty = torch.mm(xs.T, y, out=self._scratch("xty", d, len(classes)))
        self.xty.index_add_(1, classes, self._scratch("xty64", d, len(classes), dtype=torch.float64).copy_(xty))

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Gram Xc^T Xc, cross Xc^T Yc, mean x, mean y), all float64."""
        if self.n == 0:
            raise ValueError("RidgeStats.solve: no labelled tokens were accumulated")
        mx, my = self.sum_x / self.n, self.sum_y / self.n  # mx is relative to the shift
        gram = self.xtx - self.n * torch.outer(mx, mx)
        cross = self.xty - self.n * torch.outer(mx, my)
        return gram, cross, mx + self.shift.double(), my

    def lambda_scale(self) -> float:
        """Absolute penalty per unit lambda: trace(G) / D, the mean eigenvalue of G."""
        gram = self.centred()[0]
        return _scale(gram)

    def solve(self, lambdas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge weights (L, D, C) and bias (L, C), float64, for every relative lambda at once.

        W_l = V diag(1 / (s + lambda_l * trace(G)/D)) V^T Xc^T Yc from ONE eigh(G) = V diag(s) V^T;
        the bias is unpenalised: b_l = mean_y - mean_x W_l.
        """
        gram, cross, mean_x, mean_y = self.centred()
        absolute = torch.as_tensor(list(lambdas), dtype=torch.float64, device=self.device) * _scale(gram)
        s, v = torch.linalg.eigh(gram)
        s = s.clamp(min=0)  # round-off can leave the smallest eigenvalues slightly negative
        proj = v.T @ cross  # (D, C)
        weights = v @ (proj.unsqueeze(0) / (s.view(1, -1, 1) + absolute.view(-1, 1, 1)))
        bias = mean_y.unsqueeze(0) - mean_x @ weights
        return weights, bias


def _scale(gram: torch.Tensor) -> float:
    scale = float(torch.trace(gram)) / gram.shape[0]
    return scale if scale > 0 else 1.0  # constant features: any positive scale regularises


def stats_bytes(dims: list[int], num_classes: int = NUM_CLASSES) -> int:
    """Memory of the ridge statistics for layers of the given widths (see RidgeStats)."""
    return sum(RidgeStats.nbytes_for(d, num_classes) for d in dims)


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
        size = RidgeStats.nbytes_for(dims[key], num_classes)
        if groups[-1] and used + size > max_stats_bytes:
            groups.append([])
            used = 0
        groups[-1].append(key)
        used += size
    return groups


# --------------------------------------------------------------------------------------------
# Scoring: argmax of the bilinearly upsampled logits, computed on candidate classes only
# --------------------------------------------------------------------------------------------

class SparsePrediction(NamedTuple):
    """An argmax map in two parts: whole cells with a single possible class, and pixels.

    first (N, R*Q): the class position predicted in every pixel of cell r*Q+q where `single`;
    parts: (item (A,), pixel (A, S), label (A, S)) for every other pixel (cells with several
    candidates, items computed by the plain kernel): item index, flat pixel index, class
    position. Pixel H*W is padding (border cells are smaller): it is ignored downstream rather
    than masked out here, as boolean indexing is slow on CPU.
    """

    first: torch.Tensor
    single: torch.Tensor
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class UpsampleArgmax:
    """argmax over classes of F.interpolate(logits, size, bilinear, align_corners=False).

    Why not just that: scoring every layer x lambda at label resolution with all classes costs
    ~40 forward passes of a small ViT. Every output pixel is a convex combination of the logits
    at (at most) 4 grid points, and the pixels between the same 4 grid points form a cell. In a
    cell, class c can only win somewhere if max_corners(l_c) >= max_c' min_corners(l_c'); many
    cells (region interiors) have a single such candidate: they are predicted (and counted, see
    `CellLabels`) as a whole, without touching pixels. The other cells are interpolated for their
    candidates only, with the kernel's own weights (read off F.interpolate once) as a tiny
    matmul. Candidates are kept in ascending class order and the first maximum wins, so ties
    resolve to the lowest class like a full argmax. The result equals the full computation up to
    float rounding at exact near-ties (the full computation varies at that level itself: its CPU
    kernel vectorises across channels, so it depends on the batch size).
    Logits come channels-last, (N, grid, grid, C), so reductions over classes are contiguous.
    """

    def __init__(self, grid: int, size: tuple[int, int], device: str | torch.device = "cpu",
                 cell_fraction: float = 0.5, max_elements: int = 1 << 24) -> None:
        self.grid, self.size = grid, size
        self.cell_fraction, self.max_elements = cell_fraction, max_elements
        self.rows = _AxisCells.build(grid, size[0], device)
        self.cols = _AxisCells.build(grid, size[1], device)
        self.pixels, self.weights = self._cell_tables(device)
        # The cell of every pixel, flat: (H*W,) values r*Q+q.
        self.cell_of_pixel = (self.rows.cell_of[:, None] * self.cells[1] + self.cols.cell_of[None, :]).reshape(-1)

    @property
    def cells(self) -> tuple[int, int]:
        return len(self.rows.lower), len(self.cols.lower)

    def _cell_tables(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell r * Q + q: its flat pixel indices (R*Q, S) (padding -> H*W, out of range)
        and the weights of its 4 corners at each of those pixels (R*Q, 4, S)."""
        rows, cols, (height, width) = self.rows, self.cols, self.size
        valid = (rows.members < height)[:, None, :, None] & (cols.members < width)[None, :, None, :]
        flat = rows.members[:, None, :, None] * width + cols.members[None, :, None, :]
        pixels = torch.where(valid, flat, height * width).flatten(0, 1).flatten(1)
        lo_h, hi_h = rows.w_lo[:, None, :, None], rows.w_hi[:, None, :, None]
        lo_w, hi_w = cols.w_lo[None, :, None, :], cols.w_hi[None, :, None, :]
        weights = torch.stack([lo_h * lo_w, lo_h * hi_w, hi_h * lo_w, hi_h * hi_w], 2).flatten(0, 1).flatten(2)
        return pixels.to(device), weights.to(device)

    def corners(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each cell's logits at upper-left, upper-right, lower-left, lower-right: 4 x (N*R*Q, C)."""
        rows, cols = self.rows, self.cols
        top, bottom = logits.index_select(1, rows.lower), logits.index_select(1, rows.upper)
        return tuple(half.index_select(2, side).flatten(0, 2)
                     for half in (top, bottom) for side in (cols.lower, cols.upper))

    @staticmethod
    def candidates(corners: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """bool (..., C): the classes that can win at some pixel of each cell."""
        # Elementwise over the 4 corner tensors: a reduction over a trailing axis of 4 is slow.
        hi = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3]))
        lo = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3]))
        floor = lo.amax(-1, keepdim=True)  # the winner's value at any pixel of the cell is >= this
        # Slack for the float rounding of interpolation: a few ulp of the largest |logit| in the cell.
        magnitude = torch.maximum(hi.amax(-1, keepdim=True), -lo.amin(-1, keepdim=True)).abs()
        return hi >= floor - 1e-5 * magnitude

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits float (N, grid, grid, C) -> predicted class position (N, H, W) int64."""
        n, (h, w) = len(logits), self.size
        sparse = self.sparse(logits)
        spread = sparse.first.view(n, *self.cells).index_select(1, self.rows.cell_of)
        pred = torch.empty((n, h * w + 1), dtype=torch.long, device=logits.device)  # + the padding pixel
        pred[:, :-1] = spread.index_select(2, self.cols.cell_of).reshape(n, h * w)
        for item, pixel, label in sparse.parts:
            pred[item.unsqueeze(1).expand_as(pixel), pixel] = label
        return pred[:, :-1].reshape(n, h, w)

    def sparse(self, logits: torch.Tensor) -> SparsePrediction:
        """The argmax map as whole cells plus the pixels of the other cells (see the class doc)."""
        n, c, (h, w) = len(logits), logits.shape[-1], self.size
        corners = self.corners(logits)  # 4 x (N*R*Q, C): one row per (item, cell)
        cand = self.candidates(corners)
        count = cand.sum(-1).view(n, -1)
        first = cand.to(torch.uint8).argmax(-1).view(n, -1)  # the winner where it is the only candidate
        single = count == 1
        # Items where the candidates' pixels exceed cell_fraction of all C*H*W outputs (near-flat
        # logits over many classes) go to the plain kernel, whose cost per output is lower. With
        # 0.5, the cell path won in every case measured (12 real classes, 150 random classes).
        work = (count * ~single).sum(1) * self.pixels.shape[1]
        full = work > self.cell_fraction * c * h * w
        parts = []
        if full.any():
            items = torch.nonzero(full).squeeze(1)
            single[items] = False
            pixels = torch.arange(h * w, device=logits.device).expand(len(items), -1)
            parts.append((items, pixels, self._full(logits.index_select(0, items)).view(len(items), -1)))
        cells = torch.nonzero((~single & ~full.unsqueeze(1)).view(-1)).squeeze(1)
        if len(cells):
            sizes = count.view(-1).index_select(0, cells)
            # Bucket by candidate count (powers of two), so padding at most doubles the work.
            bucket = torch.ceil(torch.log2(sizes.double())).long()
            order = torch.argsort(bucket)
            cells, sizes = cells.index_select(0, order), sizes.index_select(0, order)
            start = 0
            for length in torch.bincount(bucket).tolist():
                if length:
                    chosen = slice(start, start + length)
                    parts.append(self._interpolate(corners, cand, cells[chosen], int(sizes[chosen].max())))
                    start += length
        return SparsePrediction(first, single, parts)

    def _full(self, logits: torch.Tensor) -> torch.Tensor:
        """The plain computation, in chunks of at most max_elements upsampled logits."""
        per_item = logits.shape[-1] * self.size[0] * self.size[1]
        step = max(1, self.max_elements // per_item)
        out = []
        for start in range(0, len(logits), step):
            chunk = logits[start:start + step].permute(0, 3, 1, 2)  # channels-last strides: fast kernel
            up = F.interpolate(chunk, size=self.size, mode="bilinear", align_corners=False)
            out.append(up.max(1).indices)  # first maximum on ties, like argmax
        return torch.cat(out)

    def _interpolate(self, corners: tuple[torch.Tensor, ...], cand: torch.Tensor, cells: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item (A,), pixel (A, S), class position (A, S)) at the given (item, cell) rows."""
        c = cand.shape[-1]
        per_item = self.pixels.shape[0]
        key = cand.index_select(0, cells) * torch.arange(c, 0, -1, device=cand.device)  # larger = lower class
        top = key.topk(k, dim=1).values
        idx = torch.where(top > 0, c - top, c - top[:, :1])  # ascending; padded with the first
        values = torch.stack([corner.index_select(0, cells).gather(1, idx) for corner in corners], -1)  # (A, k, 4)
        cell = cells % per_item
        win = torch.bmm(values, self.weights.index_select(0, cell)).max(1).indices  # (A, S); first max on ties
        return cells // per_item, self.pixels.index_select(0, cell), idx.gather(1, win)


class CellLabels:
    """Label statistics of a batch per cell, to count whole single-class cells at once.

    Shared by every layer and lambda of the batch: per (image, cell) the number of pixels of
    each class and of non-ignore pixels; and per pixel the label as a class position of a head
    (`positions`), for the pixels counted one by one.
    """

    def __init__(self, labels: torch.Tensor, upsample: UpsampleArgmax, num_classes: int, ignore: int) -> None:
        b = len(labels)
        cells = upsample.cells[0] * upsample.cells[1]
        self.num_classes, self.ignore, self.images = num_classes, ignore, b
        flat = labels.reshape(b, -1).long()
        # Labels per pixel, plus the padding pixel H*W of SparsePrediction, which is ignore.
        self.flat = torch.cat([flat, torch.full((b, 1), ignore, dtype=torch.long, device=labels.device)], 1)
        cell = (torch.arange(b, device=labels.device).view(b, 1) * cells + upsample.cell_of_pixel).reshape(-1)
        flat = flat.reshape(-1)
        known = flat < num_classes
        # float64: they are bincount weights; flat (image * cells + cell) * C + class, like `valid`.
        self.hist = torch.bincount(cell[known] * num_classes + flat[known],
                                   minlength=b * cells * num_classes).double()
        self.valid = torch.bincount(cell[flat != ignore], minlength=b * cells).double()
        self.area_label = torch.bincount(flat[known], minlength=num_classes).double().cpu()
        self._positions: dict[tuple[int, ...], torch.Tensor] = {}

    def positions(self, classes: torch.Tensor) -> torch.Tensor:
        """(B * (H*W + 1),) the label of each pixel as a position in `classes`; K = len(classes)
        for a label outside them (it counts as predicted area, never as a hit), K + 1 for ignore."""
        key = tuple(classes.tolist())
        if key not in self._positions:
            k = len(classes)
            lookup = torch.full((max(256, self.ignore + 1),), k, dtype=torch.long, device=classes.device)
            lookup[classes] = torch.arange(k, device=classes.device)
            lookup[self.ignore] = k + 1
            self._positions[key] = lookup[self.flat.reshape(-1)]
        return self._positions[key]


def count_sparse(meters: list[SegmentationMeter], pred: SparsePrediction, classes: torch.Tensor,
                 labels: CellLabels) -> None:
    """`meters[l].update(...)` for predictions of L*B items (lambda-major), counted per cell.

    A single-class cell adds its class histogram to the intersection and its non-ignore pixel
    count to the predicted area, exactly what its pixels would add one by one. Other pixels are
    counted by class position (K = len(classes)) and mapped to class ids at the end; masked
    entries go to a discarded last bin (boolean indexing is slow on CPU).
    """
    m, c, k, b = len(meters), labels.num_classes, len(classes), labels.images
    n, cells = pred.first.shape
    item = torch.arange(n, device=classes.device).view(n, 1)
    where = ((item % b) * cells + torch.arange(cells, device=classes.device)).view(-1)
    code = torch.where(pred.single, (item // b) * k + pred.first, m * k).view(-1)
    hist = labels.hist.take(where * c + classes[pred.first].view(-1))
    inter = torch.bincount(code, weights=hist, minlength=m * k + 1)
    area_pred = torch.bincount(code, weights=labels.valid.take(where), minlength=m * k + 1)
    positions, stride = labels.positions(classes), labels.flat.shape[1]
    for part_item, pixel, label in pred.parts:
        truth = positions.take(((part_item % b) * stride).unsqueeze(1) + pixel)
        code = torch.where(truth <= k, ((part_item // b) * k).unsqueeze(1) + label, m * k)
        inter += torch.bincount(torch.where(truth == label, code, m * k).view(-1), minlength=m * k + 1)
        area_pred += torch.bincount(code.view(-1), minlength=m * k + 1)
    inter = torch.zeros(m, c, dtype=torch.float64).index_add_(1, classes.cpu(), inter[:-1].view(m, k).cpu())
    area_pred = torch.zeros(m, c, dtype=torch.float64).index_add_(1, classes.cpu(), area_pred[:-1].view(m, k).cpu())
    for i, meter in enumerate(meters):
        meter.intersect += inter[i]
        meter.union += area_pred[i] + labels.area_label - inter[i]
        meter.label_area += labels.area_label


class _AxisCells:
    """One axis of bilinear upsampling, its outputs grouped into cells sharing both neighbours.

    Neighbours and weights are read off the kernel itself (by interpolating one-hot rows), so
    border clamping and weights are exactly those of F.interpolate.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor, cell_of: torch.Tensor, members: torch.Tensor,
                 w_lo: torch.Tensor, w_hi: torch.Tensor) -> None:
        self.lower, self.upper = lower, upper  # (R,) grid index of each cell's two neighbours
        self.cell_of = cell_of  # (out,) the cell of every output index
        self.members, self.w_lo, self.w_hi = members, w_lo, w_hi  # (R, S) outputs (padding = out), weights

    @classmethod
    def build(cls, grid: int, out: int, device: str | torch.device) -> "_AxisCells":
        eye = torch.eye(grid).view(grid, 1, grid, 1)
        weight = F.interpolate(eye, size=(out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]  # (grid, out)
        index = torch.arange(grid).view(grid, 1).expand(grid, out)
        used = weight > 0
        lower = torch.where(used, index, grid).amin(0)
        upper = torch.where(used, index, -1).amax(0)
        outputs = torch.arange(out)
        w_lo = weight[lower, outputs]
        w_hi = torch.where(upper > lower, weight[upper, outputs], 0.0)
        pairs, cell_of = torch.unique(torch.stack([lower, upper], 1), dim=0, return_inverse=True)
        width = int(torch.bincount(cell_of).max())
        members = torch.full((len(pairs), width), out, dtype=torch.long)
        lo, hi = torch.zeros(len(pairs), width), torch.zeros(len(pairs), width)
        for cell in range(len(pairs)):
            mine = torch.nonzero(cell_of == cell).squeeze(1)
            members[cell, :len(mine)], lo[cell, :len(mine)], hi[cell, :len(mine)] = mine, w_lo[mine], w_hi[mine]
        return cls(*(t.to(device) for t in (pairs[:, 0], pairs[:, 1], cell_of, members, lo, hi)))


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------

def _batches(data: Any, split: str, rows: Sequence[int] | None,
             batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) batches; reads whole Zarr chunks at a time so none is decoded twice."""
    images, labels = data[f"{split}/images"], data[f"{split}/labels"]
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
            yield im[b:b + batch_size], lab[b:b + batch_size]


def _count(data: Any, split: str, rows: Sequence[int] | None) -> int:
    return int(data[f"{split}/images"].shape[0]) if rows is None else len(rows)


def _extract(backbone: Backbone, images: np.ndarray, labels: np.ndarray, prompts_fn: PromptsFn | None,
             keys: list[str]) -> dict[str, torch.Tensor]:
    prompts = prompts_fn(labels) if prompts_fn is not None else None
    tokens, _ = backbone.extract(torch.from_numpy(np.ascontiguousarray(images)), prompts, keys)
    return tokens


def fit_pass(backbone: Backbone, data: Any, rows: Sequence[int] | None, keys: list[str], dims: dict[str, int],
             prompts_fn: PromptsFn | None, batch_size: int, num_classes: int, device: torch.device,
             desc: str) -> dict[str, RidgeStats]:
    """One pass over the training split: ridge statistics of every key (one forward per batch)."""
    workspace: dict[str, torch.Tensor] = {}  # per-batch scratch, shared by all layers
    stats = {k: RidgeStats(dims[k], num_classes, device, workspace) for k in keys}
    total = math.ceil(_count(data, "training", rows) / batch_size)
    for images, labels in progress(_batches(data, "training", rows, batch_size), desc=desc, total=total,
                                   unit="batch"):
        y, mask = token_label_distribution(labels, backbone.grid, num_classes)
        tokens = _extract(backbone, images, labels, prompts_fn, keys)
        everything = bool(mask.all())  # the usual case: no copy of the features
        y = y.flatten(0, 1) if everything else y[mask]
        classes = torch.nonzero(y.sum(0) > 0).squeeze(1)  # shared by every layer
        y, classes = y.index_select(1, classes).to(device), classes.to(device)
        for key in keys:
            stats[key].update(tokens[key] if everything else tokens[key][mask], y, classes)
    return stats


def score_pass(backbone: Backbone, data: Any, rows: Sequence[int] | None, heads: dict[str, Head],
               prompts_fn: PromptsFn | None, batch_size: int, num_classes: int, device: torch.device,
               desc: str) -> dict[str, list[SegmentationMeter]]:
    """One pass over the validation split scoring every key x lambda with the solved heads.

    One layer at a time: its logits for all lambdas (a few MB) stay in cache; stacking layers
    into bigger calls was measured slower on CPU.
    """
    keys = list(heads)
    n_lambdas = heads[keys[0]][0].shape[0]
    meters = {k: [SegmentationMeter(num_classes) for _ in range(n_lambdas)] for k in keys}
    g = backbone.grid
    upsample: UpsampleArgmax | None = None
    total = math.ceil(_count(data, "validation", rows) / batch_size)
    batches = _batches(data, "validation", rows, batch_size)
    for images, labels in progress(batches, desc=desc, total=total, unit="batch"):
        if upsample is None:
            upsample = UpsampleArgmax(g, tuple(labels.shape[1:]), device)
        tokens = _extract(backbone, images, labels, prompts_fn, keys)
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


def run_scan(backbone: Backbone, data_group: Any, split_rows: dict[str, Sequence[int]] | None, keys: list[str],
             prompts_fn: PromptsFn | None, lambdas: Sequence[float], batch_size: int, *, prompt: str = "none",
             num_classes: int = NUM_CLASSES, max_stats_bytes: int | None = None,
             device: str | torch.device = "cpu") -> pd.DataFrame:
    """Rank layers: ridge statistics on the training split, solve, score on the validation split.

    split_rows: rows per split of the data store to use (None: all). Returns one row per layer
    with columns model, prompt, layer, best_lambda, miou, acc. `df.attrs` (plain data, so frames
    still concatenate) holds the full grid (`grid`: records layer, lambda, miou, acc), the wall
    time per phase (`seconds`) and each layer's absolute penalty per unit lambda (`lambda_scale`).
    """
    device = torch.device(device)
    keys = sort_keys(list(keys))
    backbone.check_keys(keys)
    lambdas = sorted(float(x) for x in lambdas)
    dims = {k: backbone.dims()[k] for k in keys}
    rows = split_rows or {}
    groups = plan_groups(keys, dims, max_stats_bytes, num_classes)
    _log_plan(backbone, keys, dims, groups, max_stats_bytes, num_classes, rows)
    seconds = {"fit": 0.0, "solve": 0.0, "score": 0.0}
    heads: dict[str, Head] = {}
    scales: dict[str, float] = {}
    for i, group in enumerate(groups):
        t0 = time.perf_counter()
        label = f"scan {backbone.name}/{prompt} fit" + (f" group {i + 1}/{len(groups)}" if len(groups) > 1 else "")
        stats = fit_pass(backbone, data_group, rows.get("training"), group, dims, prompts_fn, batch_size,
                         num_classes, device, label)
        t1 = time.perf_counter()
        for key in group:
            heads[key], scales[key] = _solve(stats.pop(key), lambdas)
        seconds["fit"] += t1 - t0
        seconds["solve"] += time.perf_counter() - t1
        del stats
        if device.type == "cuda":
            torch.cuda.empty_cache()
    t0 = time.perf_counter()
    meters = score_pass(backbone, data_group, rows.get("validation"), heads, prompts_fn, batch_size, num_classes,
                        device, f"scan {backbone.name}/{prompt} score")
    seconds["score"] = time.perf_counter() - t0
    table, grid = _summarise(backbone.name, prompt, keys, lambdas, meters)
    grid = grid.to_dict("records")
    table.attrs.update({"grid": grid, "seconds": seconds, "lambda_scale": scales})
    log.info("scan %s/%s: %s", backbone.name, prompt, {k: round(v, 2) for k, v in seconds.items()})
    return table


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


def _summarise(model: str, prompt: str, keys: list[str], lambdas: list[float],
               meters: dict[str, list[SegmentationMeter]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    records, grid, edge = [], [], []
    for key in keys:
        mious = np.array([m.miou() for m in meters[key]])
        accs = np.array([m.accuracy() for m in meters[key]])
        best = int(np.argmax(np.where(np.isnan(mious), -np.inf, mious)))  # first = smallest lambda on ties
        if len(lambdas) > 1 and best in (0, len(lambdas) - 1):
            edge.append(key)
        records.append({"model": model, "prompt": prompt, "layer": key, "best_lambda": lambdas[best],
                        "miou": float(mious[best]), "acc": float(accs[best])})
        grid += [{"layer": key, "lambda": lam, "miou": float(mi), "acc": float(ac)}
                 for lam, mi, ac in zip(lambdas, mious, accs)]
    if edge:
        log.warning("best lambda at the edge of the grid %s for %s: a wider scan.lambdas may score higher",
                    lambdas, edge)
    grid_df = pd.DataFrame(grid)
    log.info("mIoU per layer x lambda:\n%s", grid_df.pivot(index="layer", columns="lambda", values="miou")
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


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS at once.

    Why: every batch allocates and frees MB-sized tensors per layer (captured activations,
    logits, prediction maps). With glibc's defaults they go back to the OS and come back as
    fresh pages, and the page faults cost more than the arithmetic: measured ~600k faults and
    +25% wall time on the fit pass of the tiny benchmark ViT, none with these settings. The
    price is up to `trim_threshold` of freed memory kept by the process. Process-wide, so it is
    called from entry points (the rule script, the benchmark), not from library code.
    Returns False where mallopt is unavailable (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold) == 1
                and libc.mallopt(m_trim_threshold, trim_threshold) == 1)


# --------------------------------------------------------------------------------------------
# Config helpers and agreement with the probes
# --------------------------------------------------------------------------------------------

def scan_keys(dims: dict[str, int], layers: str | list[str]) -> list[str]:
    """Config `scan.layers`: "all" = every key of the model, else the listed keys it has."""
    keys, missing = _select_keys(dims, layers)
    if missing:
        log.warning("scan.layers: this model has no %s; scanning the others", missing)
    if not keys:
        raise ValueError(f"config key scan.layers: none of {layers} exist in this model ({sorted(dims)})")
    return keys


def _select_keys(dims: dict[str, int], layers: str | list[str]) -> tuple[list[str], list[str]]:
    if layers == "all":
        return sort_keys(list(dims)), []
    return sort_keys([k for k in layers if k in dims]), [k for k in layers if k not in dims]


def host_stats_mb(config: dict[str, Any], name: str, on_gpu: bool, batch_tokens: int | None = None) -> int:
    """Host RAM (MiB) the scan adds to a job beyond the model: the ridge statistics (capped by
    the optional `scan.max_stats_mb`), their per-batch scratch and the solved heads. Zero when
    they live on the GPU. For the rule's `resources` (no logging: runs at DAG build)."""
    if on_gpu:
        return 0
    from .specs import model_spec  # local: specs is only needed for this helper

    settings, model = config["scan"], config["models"][name]
    spec = model_spec(name, model)
    keys, _ = _select_keys(spec.dims(), settings["layers"])
    widths = [spec.dims()[k] for k in keys] or [spec.dim]
    stats = stats_bytes(widths)
    if settings.get("max_stats_mb") is not None:
        stats = min(stats, max(int(settings["max_stats_mb"] * 2**20), stats_bytes([max(widths)])))
    d = max(widths)
    tokens = batch_tokens or settings["batch_size"] * spec.tokens
    scratch = 4 * (tokens * d + d * d) + 12 * d * NUM_CLASSES
    heads = 4 * len(settings["lambdas"]) * NUM_CLASSES * sum(widths)
    return math.ceil((stats + scratch + heads) / 2**20)


def prompts_filler(text: str | None, class_names: list[str] | None) -> PromptsFn | None:
    """The prompt hook for a prompt template: None for prompt-free models (CLIP)."""
    if text is None:
        return None
    from .prompts import fill_prompt  # imported lazily: only LLaVA needs it

    return lambda labels: [fill_prompt(text, label, class_names) for label in labels]


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
