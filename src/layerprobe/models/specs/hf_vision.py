"""Hugging Face vision encoders (DINOv2 with or without registers, SigLIP, CLIP): the spec read from
the checkpoint's own config.json (through transformers' config classes, so library defaults fill
omitted fields) and preprocessor_config.json (the input resolution and normalisation).

The input resolution is the image processor's (crop_size when it center-crops, else size), not the
config's `image_size`: DINOv2 checkpoints say 518 in config.json (the size their position
embeddings were trained at, interpolated at run time) but are fed 224-px crops. CLIP and SigLIP
embed positions for exactly their config `image_size`, so the processor must agree with it.

A full SigLIP/CLIP checkpoint (text and vision towers) is read as its `vision_config`; only the
vision model is built (`SiglipVisionModel` / `CLIPVisionModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core import ModelSpec, UnknownModel, forward_flops, transformer_params
from .hub import read_json

# config.json model_type -> the vision-encoder family whose vision part is loaded.
FAMILIES = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
    "clip": "clip",
    "clip_vision_model": "clip",
}
COMPOSITE = ("siglip", "clip")  # text + vision checkpoints: the vision part is `vision_config`
HAS_CLS = {"dinov2": True, "dinov2_with_registers": True, "siglip": False, "clip": True}
# Families whose position embeddings are interpolated to any input grid (else input = config image_size).
INTERPOLATES = ("dinov2", "dinov2_with_registers")


@dataclass(frozen=True)
class Preprocessing:
    """What the image processor does to an image already at `size` x `size` (no resize/crop then)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float  # multiply uint8 values by this first (1/255), 1.0 when do_rescale is off


def supported_types() -> list[str]:
    return list(FAMILIES)


def vision_config(where: str, raw: dict[str, Any]) -> tuple[str, Any]:
    """(family, the transformers vision config object) of a config.json dict."""
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise UnknownModel(f"{where}: config.json has model_type {model_type!r}; kind hf_vision supports "
                           f"{supported_types()} (for LLaVA checkpoints use kind: llava)")
    from transformers import AutoConfig

    config = AutoConfig.for_model(**raw)
    if model_type in COMPOSITE:
        config = config.vision_config
    return FAMILIES[model_type], config


def _side(where: str, field: str, value: Any) -> int:
    """One square side from a processor size entry: an int, {height, width} or {shortest_edge}."""
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            if int(value["height"]) != int(value["width"]):
                raise UnknownModel(f"{where}: preprocessor_config.json {field} {value} is not square; layerprobe "
                                   "feeds square images")
            return int(value["height"])
        if "shortest_edge" in value:  # a square image stays square
            return int(value["shortest_edge"])
    raise UnknownModel(f"{where}: preprocessor_config.json {field} {value!r} does not give one square input size")


def preprocessing(where: str, raw: dict[str, Any]) -> Preprocessing:
    """The processor's input resolution and normalisation from a preprocessor_config.json dict (or
    an image processor's `to_dict()`)."""
    if raw.get("do_center_crop") and raw.get("crop_size") is not None:
        size = _side(where, "crop_size", raw["crop_size"])
    elif raw.get("size") is not None:
        size = _side(where, "size", raw["size"])
    else:
        raise UnknownModel(f"{where}: preprocessor_config.json gives neither crop_size nor size")
    if raw.get("do_normalize", True):
        mean, std = raw.get("image_mean"), raw.get("image_std")
        if mean is None or std is None:
            raise UnknownModel(f"{where}: preprocessor_config.json normalises but gives no image_mean/image_std")
        mean, std = [float(m) for m in _triple(mean)], [float(s) for s in _triple(std)]
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    rescale = float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0
    return Preprocessing(size, tuple(mean), tuple(std), rescale)


def _triple(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * 3


def check_resolution(where: str, family: str, config: Any, size: int) -> int:
    """The patch size, after checking the processor's input size fits the model's patch grid."""
    patch = int(_side(where, "patch_size", config.patch_size))
    if size % patch:
        raise UnknownModel(f"{where}: input size {size} (preprocessor_config.json) is not a multiple of "
                           f"patch_size {patch}")
    if family not in INTERPOLATES:
        trained = _side(where, "image_size", config.image_size)
        if trained != size:
            raise UnknownModel(f"{where}: the image processor feeds {size} px but the {family} vision model "
                               f"embeds positions for {trained} px (config.json image_size)")
    return patch


def hf_vision_spec(name: str, model: dict[str, Any], cache_dir: str | None) -> ModelSpec:
    where = f"models.{name}.hub_id"
    raw = read_json(where, model["hub_id"], "config.json", cache_dir)
    family, config = vision_config(where, raw)
    prep = preprocessing(where, read_json(where, model["hub_id"], "preprocessor_config.json", cache_dir))
    patch = check_resolution(where, family, config, prep.size)
    depth, dim = int(config.num_hidden_layers), int(config.hidden_size)
    registers = int(getattr(config, "num_register_tokens", 0)) if family == "dinov2_with_registers" else 0
    has_cls = HAS_CLS[family]
    grid = prep.size // patch
    blocks = block_params(family, config)
    trained_grid = _side(where, "image_size", config.image_size) // patch
    embed = 3 * patch * patch * dim + (trained_grid ** 2 + int(has_cls) + registers) * dim
    head = transformer_params(1, dim, int(config.intermediate_size)) \
        if family == "siglip" and getattr(config, "vision_use_head", False) else 0
    return ModelSpec("hf_vision", depth, dim, prep.size, patch, has_cls, params=blocks + embed + head,
                     flops=forward_flops(blocks, grid * grid + int(has_cls) + registers))


def block_params(family: str, config: Any) -> float:
    depth, dim = int(config.num_hidden_layers), int(config.hidden_size)
    if family in INTERPOLATES:
        hidden = int(dim * config.mlp_ratio)
        if getattr(config, "use_swiglu_ffn", False):
            return transformer_params(depth, dim, (int(hidden * 2 / 3) + 7) // 8 * 8, gated=True)
        return transformer_params(depth, dim, hidden)
    return transformer_params(depth, dim, int(config.intermediate_size))
