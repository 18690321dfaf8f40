"""Model facts known without loading weights (needed at DAG-build time and for the plan)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .layers import PROJECTOR, layer_key, sort_keys, vision_key


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # open_clip | llava
    depth: int  # ViT blocks (CLIP) or LLM decoder layers (LLaVA)
    dim: int
    image_size: int
    patch_size: int
    has_cls: bool
    vision_depth: int = 0  # LLaVA vision tower
    vision_dim: int = 0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def dims(self) -> dict[str, int]:
        out = {layer_key(i): self.dim for i in range(self.depth + 1)}
        if self.kind == "llava":
            out.update({vision_key(i): self.vision_dim for i in range(self.vision_depth + 1)})
            out[PROJECTOR] = self.dim
        return out


# open_clip architectures with OpenAI weights (the -quickgelu names match those weights).
OPEN_CLIP_ARCHS = {
    "ViT-B-16-quickgelu": ModelSpec("open_clip", 12, 768, 224, 16, True),
    "ViT-L-14-quickgelu": ModelSpec("open_clip", 24, 1024, 224, 14, True),
    "ViT-L-14-336-quickgelu": ModelSpec("open_clip", 24, 1024, 336, 14, True),
}
# LLaVA-1.5 hub ids: LLM (Vicuna) depth/width, CLIP ViT-L/14-336 vision tower.
LLAVA_HUB_IDS = {
    "llava-hf/llava-1.5-7b-hf": ModelSpec("llava", 32, 4096, 336, 14, False, 24, 1024),
    "llava-hf/llava-1.5-13b-hf": ModelSpec("llava", 40, 5120, 336, 14, False, 24, 1024),
}


# Presets a `tiny` block can copy (backbones/tiny_llava.PRESETS holds their full configuration).
LLAVA_PRESETS = {"llava-1.5-7b": LLAVA_HUB_IDS["llava-hf/llava-1.5-7b-hf"]}


def model_spec(name: str, model: dict[str, Any]) -> ModelSpec:
    """Spec from the built-in table, or from the model's `tiny` block (demo/tests)."""
    tiny = model.get("tiny")
    if model["kind"] == "open_clip":
        if tiny is not None:
            return ModelSpec("open_clip", tiny["layers"], tiny["width"], tiny["image_size"], tiny["patch_size"], True)
        arch = model.get("arch", "")
        if arch not in OPEN_CLIP_ARCHS:
            raise KeyError(f"models.{name}.arch: unknown model {arch!r}; known: {sorted(OPEN_CLIP_ARCHS)} (or give a `tiny` block)")
        return OPEN_CLIP_ARCHS[arch]
    if tiny is not None and tiny.get("preset"):  # a real model's shapes, fewer LLM layers
        return replace(LLAVA_PRESETS[tiny["preset"]], depth=tiny["text_layers"])
    if tiny is not None:
        return ModelSpec("llava", tiny["text_layers"], tiny["text_width"], tiny["image_size"], tiny["patch_size"],
                         False, tiny["layers"], tiny["width"])
    hub_id = model.get("hub_id", "")
    if hub_id not in LLAVA_HUB_IDS:
        raise KeyError(f"models.{name}.hub_id: unknown model {hub_id!r}; known: {sorted(LLAVA_HUB_IDS)} (or give a `tiny` block)")
    return LLAVA_HUB_IDS[hub_id]


def requested_keys(model: dict[str, Any]) -> list[str]:
    """Layer keys a model's config asks for, in forward order."""
    keys = [layer_key(i) for i in model["layers"]]
    keys += [vision_key(i) for i in model.get("vision_layers", [])]
    if model.get("projector"):
        keys.append(PROJECTOR)
    return sort_keys(keys)


# Parameter counts of the full models open_clip / transformers build (text tower included for
# CLIP), for RAM requests; a LLaVA-1.5 LLM layer is 4 x 4096^2 + 3 x 4096 x 11008 = 202.4 M.
OPEN_CLIP_PARAMS = {"ViT-B-16-quickgelu": 149.6e6, "ViT-L-14-quickgelu": 427.6e6, "ViT-L-14-336-quickgelu": 427.9e6}
LLAVA_PARAMS = {"llava-hf/llava-1.5-7b-hf": (32, 7.063e9, 202.4e6), "llava-hf/llava-1.5-13b-hf": (40, 13.35e9, 314.6e6)}


def approx_params(name: str, model: dict[str, Any]) -> float:
    """Parameters of the model a job loads (0 for tiny models: their overhead dominates)."""
    tiny = model.get("tiny")
    if model["kind"] == "open_clip":
        return 0.0 if tiny is not None else OPEN_CLIP_PARAMS.get(model.get("arch", ""), 0.0)
    if tiny is not None and tiny.get("preset"):
        depth, total, per_layer = LLAVA_PARAMS["llava-hf/llava-1.5-7b-hf"]
        return total - (depth - tiny["text_layers"]) * per_layer
    if tiny is not None:
        return 0.0
    depth, total, _ = LLAVA_PARAMS.get(model.get("hub_id", ""), (0, 0.0, 0.0))
    return total
