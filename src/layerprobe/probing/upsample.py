"""Exact argmax of bilinearly upsampled logits, counted into mIoU meters cell by cell.

Shared by anything that scores a linear head on the token grid at label resolution (the layer
scan scores every layer x penalty with it). See `UpsampleArgmax` for why it is exact and fast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .metrics import SegmentationMeter


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

