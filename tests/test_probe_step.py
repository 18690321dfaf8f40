"""The CPU probe step (kept buffers, the fused upsampled cross-entropy) computes exactly what the
plain F.interpolate + F.cross_entropy step computes: loss, prediction, gradients and the head after
AdamW, bit for bit, over several steps (so the buffers' reuse is covered too). The whole probe was
also compared end to end (epochs.csv, metrics.json without its `run` block, predictions.npz) against
the plain step on the demo's tiny_vit layer_02: identical bytes (commit message)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from layerprobe.probing.step import LinearHead, ProbeStep, probe_inputs


def plain_step(head: LinearHead, opt: torch.optim.Optimizer, feats, cls, labels, size: int, concat_cls: bool):
    """The step as ProbeTrainer ran it before `layerprobe.probing.step`, spelled out."""
    labels = labels.long()
    logits = head(probe_inputs(feats, cls, concat_cls), size)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach().argmax(1)


@pytest.mark.parametrize("batch, grid, dim, size, concat_cls, batchnorm", [
    (3, 4, 16, 32, False, True),
    (2, 7, 24, 56, True, True),
    (4, 2, 8, 12, False, False),  # label size not a multiple of the grid
    (1, 14, 32, 224, False, True),  # a real CLIP grid and label size, one image
])
def test_the_cpu_step_equals_the_plain_step_bit_for_bit(batch, grid, dim, size, concat_cls, batchnorm):
    gen = torch.Generator().manual_seed(batch * 100 + grid)
    torch.manual_seed(0)
    head = LinearHead(dim * (2 if concat_cls else 1), grid, batchnorm=batchnorm)
    twin = copy.deepcopy(head)
    opt = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=1e-4)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.05, weight_decay=1e-4)
    step = ProbeStep(twin, twin_opt, size, torch.device("cpu"), concat_cls)
    for i in range(3):
        feats = (torch.randn(batch, grid * grid, dim, generator=gen) * (1 + i)).half()
        cls = torch.randn(batch, dim, generator=gen).half() if concat_cls else None
        labels = torch.randint(0, 150, (batch, size, size), generator=gen, dtype=torch.uint8)
        labels[:, : size // 3] = 255  # ignored pixels
        want_loss, want_pred = plain_step(head, opt, feats, cls, labels, size, concat_cls)
        loss, pred, long_labels = step(feats, cls, labels)
        assert torch.equal(loss.detach(), want_loss), (i, loss.item(), want_loss.item())
        assert torch.equal(pred, want_pred) and torch.equal(long_labels, labels.long())
        for (name, a), b in zip(twin.named_parameters(), head.parameters()):
            assert torch.equal(a.grad, b.grad), (i, name)  # the step's gradients (kept after opt.step)
            assert torch.equal(a, b), (i, name)  # the head after AdamW
        if batchnorm:
            assert torch.equal(twin.norm.running_var, head.norm.running_var)


def test_buffers_are_released_and_rebuilt_for_another_batch_size():
    torch.manual_seed(0)
    head = LinearHead(8, 2)
    step = ProbeStep(head, torch.optim.AdamW(head.parameters()), 8, torch.device("cpu"), False)
    for batch in (3, 1):  # the last batch of an epoch is smaller
        step(torch.randn(batch, 4, 8).half(), None, torch.randint(0, 150, (batch, 8, 8), dtype=torch.uint8))
    assert {t.numel() for t in step.buffers.flat.values()} == {1 * 150 * 8 * 8}
    step.release()
    assert not step.buffers.flat


def test_keeping_freed_memory_is_available_here():
    """glibc's mallopt answers (the rule script and the benchmark rely on it on Linux); in a
    child process, as the setting is process-wide."""
    code = "from layerprobe.malloc import keep_freed_memory as k; raise SystemExit(0 if k() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
