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
