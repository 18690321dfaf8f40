"""The probe's head and its training step, shared by the trainer and benchmarks/probe_step.py.

Head: optional BatchNorm, then a 1x1 linear map to 150 classes (DINOv2's linear protocol);
logits are bilinearly upsampled to the label size; cross-entropy ignores 255; AdamW.

On the CPU the step's cost is the upsampled logits, not the head: batch x 150 x label size^2
floats (7.5 M per image at 224 px, 16.9 M at 336 px) go through the upsampling, log-softmax,
the loss and their backwards, against 150 x width multiply-adds per token for the head. Two
things make it cheaper there without changing a number (tests/test_probe_step.py compares with
the plain F.interpolate + F.cross_entropy bit for bit):
- `UpsampledCrossEntropy` calls the very ATen kernels those two call (upsampling into the same
  memory format, log-softmax on a contiguous copy as log_softmax makes itself, the same 2-d NLL
  and the same backwards), into three buffers kept across steps: no fresh multi-GB allocation
  per step, and three such tensors alive instead of four (the plain step keeps the upsampled
  logits for the prediction through the backward).
- the prediction (the argmax over classes) is read from the upsampled logits in their
  channels-last layout, classes contiguous (argmax is exact: any layout gives the same labels).
The rule script also keeps freed memory in the heap (`layerprobe.malloc.keep_freed_memory`). On
CUDA the plain formulation runs (the caching allocator already reuses memory).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.ade20k import IGNORE, NUM_CLASSES

aten = torch.ops.aten
MEAN = 1  # at::Reduction::Mean, as F.cross_entropy's default


class LinearHead(nn.Module):
    def __init__(self, dim: int, grid: int, num_classes: int = NUM_CLASSES, batchnorm: bool = True) -> None:
        super().__init__()
        self.grid = grid
        # momentum=None: a cumulative average of batch statistics. The inputs are frozen features,
        # so their statistics never drift; an exponential average (momentum 0.1) still carries
        # 0.9^n of its initial variance 1.0 after n batches, which swamps features of small
        # variance (LLaVA projector outputs, var ~1e-4) in short runs and breaks eval-mode scores.
        self.norm = nn.BatchNorm1d(dim, momentum=None) if batchnorm else nn.Identity()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, out_size: int) -> torch.Tensor:
        """tokens (B, T, D) -> logits (B, C, out_size, out_size)."""
        logits = self.grid_logits(tokens)
        return F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=False)

    def grid_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, D) -> logits on the token grid (B, C, grid, grid)."""
        b, t, d = tokens.shape
        x = self.norm(tokens.reshape(b * t, d))
        return self.linear(x).reshape(b, self.grid, self.grid, -1).permute(0, 3, 1, 2)


def probe_inputs(feats: torch.Tensor, cls: torch.Tensor | None, concat_cls: bool) -> torch.Tensor:
    """fp16 tokens (B, T, D) -> float32, with the CLS token concatenated to every patch if asked."""
    feats = feats.float()
    if concat_cls:
        feats = torch.cat([feats, cls.float()[:, None, :].expand(-1, feats.shape[1], -1)], dim=-1)
    return feats


class StepBuffers:
    """Flat float buffers reused by every step; viewed in whichever layout a kernel writes."""

    def __init__(self) -> None:
        self.flat: dict[str, torch.Tensor] = {}

    def view(self, name: str, shape: tuple[int, ...], like: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        n = shape[0] * shape[1] * shape[2] * shape[3]
        flat = self.flat.get(name)
        if flat is None or flat.numel() != n or flat.dtype != like.dtype or flat.device != like.device:
            flat = self.flat[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        if not channels_last:
            return flat.view(shape)
        b, c, h, w = shape
        return flat.view(b, h, w, c).permute(0, 3, 1, 2)

    def clear(self) -> None:
        self.flat.clear()


def _channels_last(t: torch.Tensor) -> bool:
    """The memory format F.interpolate gives its output for input `t` (its suggested format)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class UpsampledCrossEntropy(torch.autograd.Function):
    """F.cross_entropy(F.interpolate(grid, size, bilinear), labels, ignore_index=255) and the
    argmax of the upsampled logits, as the plain calls compute them, into kept buffers."""

    @staticmethod
    def forward(ctx: Any, grid: torch.Tensor, labels: torch.Tensor, size: int,  # type: ignore[override]
                buffers: StepBuffers) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (grid.shape[0], grid.shape[1], size, size)
        up = buffers.view("a", shape, grid, channels_last=_channels_last(grid))
        aten.upsample_bilinear2d.out(grid, [size, size], False, None, None, out=up)
        # log_softmax makes its input contiguous itself; here into a kept buffer.
        contiguous = up if up.is_contiguous() else buffers.view("b", shape, grid).copy_(up)
        logp = buffers.view("c", shape, grid)
        aten._log_softmax.out(contiguous, 1, False, out=logp)
        loss, total_weight = grid.new_empty(()), grid.new_empty(())
        aten.nll_loss2d_forward.output(logp, labels, None, MEAN, IGNORE, output=loss, total_weight=total_weight)
        pred = up.argmax(1)  # before the backward reuses the buffer
        ctx.save_for_backward(logp, labels, total_weight)
        ctx.grid_shape, ctx.size, ctx.buffers = list(grid.shape), size, buffers
        ctx.mark_non_differentiable(pred)
        return loss, pred

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _: Any) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        logp, labels, total_weight = ctx.saved_tensors
        grad_nll = ctx.buffers.view("b", tuple(logp.shape), logp)
        aten.nll_loss2d_backward.grad_input(grad_loss, logp, labels, None, MEAN, IGNORE, total_weight,
                                            grad_input=grad_nll)
        grad_logits = ctx.buffers.view("a", tuple(logp.shape), logp)
        aten._log_softmax_backward_data.out(grad_nll, logp, 1, logp.dtype, out=grad_logits)
        grad = aten.upsample_bilinear2d_backward(grad_logits, [ctx.size, ctx.size], ctx.grid_shape, False, None, None)
        return grad, None, None, None


class ProbeStep:
    """One optimisation step of a probe: what ProbeTrainer runs per batch, and what
    benchmarks/probe_step.py measures."""

    def __init__(self, head: LinearHead, opt: torch.optim.Optimizer, label_size: int, device: torch.device,
                 concat_cls: bool) -> None:
        self.head, self.opt, self.label_size = head, opt, label_size
        self.device, self.concat_cls = torch.device(device), concat_cls
        self.buffers = StepBuffers()

    def __call__(self, feats: torch.Tensor, cls: torch.Tensor | None,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, AdamW. Returns (loss, predicted labels, labels), the labels
        as int64 on the device, the prediction from the logits the loss saw."""
        labels = labels.to(self.device).long()
        tokens = probe_inputs(feats, cls, self.concat_cls)
        if self.device.type == "cpu":
            loss, pred = UpsampledCrossEntropy.apply(self.head.grid_logits(tokens), labels, self.label_size,
                                                     self.buffers)
        else:
            logits = self.head(tokens, self.label_size)
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type != "cpu":
            pred = logits.detach().argmax(1)
        return loss, pred, labels

    def release(self) -> None:
        """Drop the kept buffers (before an evaluation, which needs its own)."""
        self.buffers.clear()
