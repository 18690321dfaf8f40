"""Frozen backbones behind one interface (base.Backbone); build one with ``load_backbone``."""

from __future__ import annotations

from typing import Any

from .base import Backbone


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_backbone(name: str, model: dict[str, Any], device: str = "auto", cache_dir: str | None = None,
                  offline: bool = False) -> Backbone:
    """Load a configured model by its real loading code (hub id / 'openai' / local path).

    `cache_dir`: where fetched weights live (config `weights.cache_dir`); `offline`: read only
    from there (see layerprobe.weights), never download.
    """
    device = resolve_device(device)
    if model["kind"] == "open_clip":
        from . import tiny_clip
        from .clip import OpenClipBackbone

        if model.get("tiny") is not None:
            tiny_clip.register(model["arch"], model["pretrained"])
        return OpenClipBackbone(name, model["arch"], model["pretrained"], device, cache_dir=cache_dir)
    if model["kind"] == "hf_vision":
        from .hf_vision import HfVisionBackbone

        return HfVisionBackbone(name, model["hub_id"], dtype=model.get("dtype", "auto"),
                                attn_implementation=model.get("attn_implementation", "sdpa"), device=device,
                                cache_dir=cache_dir, local_files_only=offline)
    from .llava import LlavaBackbone

    return LlavaBackbone(name, model["hub_id"], dtype=model["dtype"], attn_implementation=model["attn_implementation"],
                         device=device, prompt_format=model["prompt_format"], cache_dir=cache_dir,
                         local_files_only=offline)
