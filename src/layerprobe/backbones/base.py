"""The interface every backbone implements: per-layer patch/image tokens from one forward."""

from __future__ import annotations

import abc

import torch


class StopForward(Exception):
    """Raised from a hook once the deepest requested layer is captured (early stop)."""


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
        self, images: torch.Tensor, prompts: list[str] | None, keys: list[str]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward for uint8 images (B, H, W, 3) already at ``image_size``.

        Returns (tokens, cls): per key float32 CPU tensors (B, grid*grid, dim) and, when the
        model has a CLS token, (B, dim) per key (empty dict otherwise).
        """

    def check_keys(self, keys: list[str]) -> None:
        unknown = sorted(set(keys) - set(self.dims()))
        if unknown:
            raise ValueError(f"model {self.name!r} has no layers {unknown}; it has {sorted(self.dims())}")
