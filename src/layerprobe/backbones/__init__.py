"""Frozen backbones behind one interface (base.Backbone); build one with ``load_backbone``."""

from __future__ import annotations

from typing import Any

from .base import Backbone


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_backbone(name: str, model: dict[str, Any], device: str = "auto") -> Backbone:
    """Load a configured model by its real loading code (hub id / 'openai' / local path)."""
    device = resolve_device(device)
    if model["kind"] == "open_clip":
        from . import tiny_clip
        from .clip import OpenClipBackbone

        if model.get("tiny") is not None:
            tiny_clip.register(model["arch"], model["pretrained"])
        return OpenClipBackbone(name, model["arch"], model["pretrained"], device)
    from .llava import LlavaBackbone

    return LlavaBackbone(name, model["hub_id"], dtype=model["dtype"], attn_implementation=model["attn_implementation"],
                         device=device, prompt_format=model["prompt_format"])
