"""Streaming ridge regression from patch tokens to their patches' label distributions.

`RidgeStats` accumulates the sufficient statistics of one layer batch by batch; one
eigendecomposition then solves it for a whole grid of penalties (see `RidgeStats.solve`).

Penalty scale: `lambdas` are relative. For a layer with centred Gram matrix G = Xc^T Xc over n
tokens and width D, the absolute penalty is lambda * trace(G) / D, i.e. lambda times the mean
eigenvalue of G (= n x the mean per-feature variance). The fit is then invariant to rescaling a
layer's features and to the number of training tokens, so one grid fits every layer and model:
lambda = 1 shrinks a direction with average variance by half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .cost import NUM_CLASSES, stats_nbytes


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
        """Bytes of the accumulators (scan_cost.stats_nbytes, which the plan uses without torch)."""
        return stats_nbytes(dim, num_classes)

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
