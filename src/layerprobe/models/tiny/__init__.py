"""Tiny random-weight models, built offline and saved exactly as real ones are, so the demo and
the tests load them through the same code as `openai` weights or a hub snapshot: an open_clip ViT
(a registered model config and a weights file), a LLaVA-1.5 (`save_pretrained`, with its
processor) and Hugging Face vision encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build(model: dict[str, Any]) -> Path:
    """Build a config entry's `tiny` model where its path points (`pretrained` or `hub_id`)."""
    tiny = model["tiny"]
    if model["kind"] == "open_clip":
        from .openclip import build as build_clip

        return build_clip(model["arch"], model["pretrained"], tiny)
    if tiny.get("preset"):
        from .llava import build_preset_llava

        return build_preset_llava(Path(model["hub_id"]), tiny["preset"], text_layers=tiny["text_layers"],
                                  seed=tiny["seed"])
    from .llava import build_tiny_llava

    return build_tiny_llava(Path(model["hub_id"]), image_size=tiny["image_size"], patch_size=tiny["patch_size"],
                            vision_width=tiny["width"], vision_layers=tiny["layers"], text_width=tiny["text_width"],
                            text_layers=tiny["text_layers"], heads=tiny["heads"], seed=tiny["seed"],
                            mixing=tiny["mixing"])
