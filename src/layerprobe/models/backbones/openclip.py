"""open_clip ViT image towers: per-block patch tokens and CLS from one forward.

Two kinds of image tower, one convention:
- open_clip's own VisionTransformer: blocks `visual.transformer.resblocks`, a class token first;
- a timm trunk (`visual.trunk`, e.g. SigLIP, EVA02, PE): blocks `visual.trunk.blocks`, then
  `num_prefix_tokens` prefix tokens (a class token first when the trunk has one, then registers,
  which are dropped), then the patch grid.
layer_00 = tokens entering block 1 (after patch embedding, positional embedding and ln_pre /
norm_pre); layer_i = output of block i, before the final norm. Hooks capture them; a hook on the
deepest requested block stops the forward (StopForward), so later blocks never run.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch

from ...data.geometry import fill_padding
from ..layers import layer_key, parse_key
from .base import Backbone, capture_blocks


class OpenClipBackbone(Backbone):
    def __init__(self, name: str, arch: str, pretrained: str, device: str = "cpu",
                 cache_dir: str | None = None) -> None:
        # Same call for "openai" and for a local weights file (demo/tests); "none": random weights
        # (the real-size smoke run).
        model = open_clip.create_model(arch, pretrained=None if pretrained == "none" else pretrained, device=device,
                                       cache_dir=cache_dir)
        self.visual = model.visual.eval()
        self.name, self.device = name, torch.device(device)
        trunk = getattr(self.visual, "trunk", None)
        if trunk is None:  # open_clip's VisionTransformer
            self.blocks = self.visual.transformer.resblocks
            self.image_size = _side(self.visual.image_size)
            self.grid = _side(self.visual.grid_size)
            self.width = self.visual.transformer.width
            self.prefix, self.has_cls = 1, True
        else:
            from ..specs.openclip import timm_trunk_info

            info = timm_trunk_info(trunk)
            if info is None:
                raise ValueError(f"model {name!r}: {arch!r} has a {type(trunk).__name__} image tower, not a ViT with a "
                                 f"patch grid")
            _, self.width, self.image_size, patch, self.prefix, self.has_cls = info
            self.blocks = trunk.blocks
            self.grid = self.image_size // patch
        cfg = open_clip.get_model_preprocess_cfg(model)  # the pretrained tag's mean/std (defaults for files)
        mean = cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = cfg.get("std") or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def dims(self) -> dict[str, int]:
        return {layer_key(i): self.width for i in range(len(self.blocks) + 1)}

    def normalize(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return fill_padding((x - self.mean) / self.std, boxes)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, prompts: list[str] | None, keys: list[str],
                dtype: torch.dtype = torch.float32,
                boxes: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.check_keys(keys)
        wanted = {parse_key(k)[1] for k in keys}
        pixels = self.normalize(images, boxes)
        captured = capture_blocks(self.blocks, wanted, lambda: self.visual(pixels))
        # open_clip's native blocks may run sequence-first (LND): back to batch-first
        captured = {i: x if x.shape[0] == images.shape[0] else x.transpose(0, 1) for i, x in captured.items()}
        tokens = {layer_key(i): captured[i][:, self.prefix:].to(dtype).cpu() for i in sorted(wanted)}
        cls = {layer_key(i): captured[i][:, 0].to(dtype).cpu() for i in sorted(wanted)} if self.has_cls else {}
        return tokens, cls


def _side(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)
