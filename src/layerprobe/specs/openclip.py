"""open_clip image towers (placeholder: being replaced by specs read from open_clip's configs)."""

from __future__ import annotations

from typing import Any

from .core import ModelSpec, UnknownModel, forward_flops, transformer_params

_OLD = {
    "ViT-B-16-quickgelu": (12, 768, 224, 16),
    "ViT-L-14-quickgelu": (24, 1024, 224, 14),
    "ViT-L-14-336-quickgelu": (24, 1024, 336, 14),
}


def open_clip_spec(name: str, model: dict[str, Any]) -> ModelSpec:
    tiny = model.get("tiny")
    if tiny is not None:
        depth, width, size, patch = tiny["layers"], tiny["width"], tiny["image_size"], tiny["patch_size"]
    elif model.get("arch") in _OLD:
        depth, width, size, patch = _OLD[model["arch"]]
    else:
        raise UnknownModel(f"models.{name}.arch: unknown model {model.get('arch')!r}")
    blocks = transformer_params(depth, width, 4 * width)
    return ModelSpec("open_clip", depth, width, size, patch, True, params=blocks,
                     flops=forward_flops(blocks, (size // patch) ** 2 + 1))
