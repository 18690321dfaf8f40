"""The interface every backbone implements: per-layer patch/image tokens from one forward."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook once the deepest requested layer is captured (early stop)."""


def capture_blocks(blocks: Sequence[nn.Module], wanted: set[int] | list[int],
                   forward: Callable[[], Any]) -> dict[int, torch.Tensor]:
    """Run `forward()` once with hooks on a stack of transformer blocks: index 0 is the input of
    blocks[0] (the embeddings), index i the output of block i (1-based). The hook of the deepest
    wanted index raises StopForward, so deeper blocks (and the final norm) never run."""
    wanted = set(wanted)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(wanted)

    def keep(index: int, x: Any) -> None:
        if index in wanted:
            captured[index] = x[0] if isinstance(x, (tuple, list)) else x
        if index == deepest:
            raise StopForward

    hooks = [blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
    hooks += [block.register_forward_hook(lambda m, args, out, i=i: keep(i, out))
              for i, block in enumerate(blocks, start=1)]
    try:
        forward()
    except StopForward:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    if set(captured) != wanted:
        raise RuntimeError(f"hooks captured layers {sorted(captured)}, expected {sorted(wanted)}")
    return captured


class Backbone(abc.ABC):
    name: str
    image_size: int
    grid: int
    has_cls: bool

    @abc.abstractmethod
    def dims(self) -> dict[str, int]:
        """Feature width for every layer key this model can extract."""

    @abc.abstractmethod
    def extract(
        self, images: torch.Tensor, prompts: list[str] | None, keys: list[str], dtype: torch.dtype = torch.float32,
        boxes: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward for uint8 images (B, H, W, 3) already at ``image_size``.

        ``boxes`` (B, 4) (pad geometry): each image's content box (top, left, height, width) in
        pixels; what lies wholly outside it is set to the model's own mean colour (0 after
        normalisation, `geometry.fill_padding`), so padded data stores serve every model.

        Returns (tokens, cls): per key CPU tensors of `dtype` (B, grid*grid, dim) and, when the
        model has a CLS token, (B, dim) per key (empty dict otherwise). The cast happens on the
        model's device, before the copy to the host: extraction asks for float16, so a GPU
        sends half the bytes over PCIe and the host never converts.
        """

    def check_keys(self, keys: list[str]) -> None:
        unknown = sorted(set(keys) - set(self.dims()))
        if unknown:
            raise ValueError(f"model {self.name!r} has no layers {unknown}; it has {sorted(self.dims())}")
