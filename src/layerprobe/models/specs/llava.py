"""LLaVA-1.5-style checkpoints: the spec read from the model's own `LlavaConfig` (config.json).

The image must become a fixed patch grid: one CLIP tower, CLS dropped
(`vision_feature_select_strategy: default`), no anyres tiling. LLaVA-NeXT and later tile the image
into a variable number of crops, so their image tokens are not one grid and are refused.
"""

from __future__ import annotations

from typing import Any

from .core import ModelSpec, UnknownModel, forward_flops, transformer_params
from .hub import read_json

# `tiny.preset` names a real model whose exact configuration a random-weight model copies.
PRESET_HUB_IDS = {"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf"}
TILING_TYPES = ("llava_next", "llava_next_video", "llava_onevision")
PROMPT_TOKENS = 40  # text tokens beside the image in a typical probe prompt (FLOPs estimate)


def llava_spec(name: str, model: dict[str, Any], cache_dir: str | None) -> ModelSpec:
    tiny = model.get("tiny")
    if tiny is not None and tiny.get("preset"):
        hub_id = PRESET_HUB_IDS[tiny["preset"]]
        raw = read_json(f"models.{name}.tiny.preset", hub_id, "config.json", None)
        return spec_from_config(f"models.{name}.tiny.preset", raw, depth=tiny["text_layers"])
    if tiny is not None:  # built at DAG run time by the build_tiny_model rule: its block is the config
        width, layers, text_width, text_layers = tiny["width"], tiny["layers"], tiny["text_width"], tiny["text_layers"]
        grid = tiny["image_size"] // tiny["patch_size"]
        vision, text = transformer_params(layers, width, 4 * width), transformer_params(text_layers, text_width,
                                                                                         4 * text_width, gated=True)
        return ModelSpec("llava", text_layers, text_width, tiny["image_size"], tiny["patch_size"], False, layers,
                         width, params=vision + text,
                         flops=forward_flops(vision, grid * grid + 1)
                         + forward_flops(text, grid * grid + PROMPT_TOKENS))
    where = f"models.{name}.hub_id"
    return spec_from_config(where, read_json(where, model["hub_id"], "config.json", cache_dir))


def spec_from_config(where: str, raw: dict[str, Any], depth: int | None = None) -> ModelSpec:
    """The spec of a config.json dict; `depth` keeps only that many LLM layers (tiny presets)."""
    check_fixed_grid(where, raw)
    from transformers import LlavaConfig

    config = LlavaConfig.from_dict(raw)
    vision, text = config.vision_config, config.text_config
    if vision.model_type != "clip_vision_model":
        raise UnknownModel(f"{where}: vision tower {vision.model_type!r}; layerprobe's LLaVA keys assume a CLIP "
                           "tower with a CLS token (vision_NN drops it)")
    if int(vision.image_size) % int(vision.patch_size):
        raise UnknownModel(f"{where}: image_size {vision.image_size} is not a multiple of patch_size "
                           f"{vision.patch_size}")
    layers = int(text.num_hidden_layers) if depth is None else depth
    width, heads = int(text.hidden_size), int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or width // heads)
    kv_width = int(getattr(text, "num_key_value_heads", None) or heads) * head_dim
    llm = transformer_params(layers, width, int(text.intermediate_size), kv_width=kv_width, gated=True)
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    embeddings = int(text.vocab_size) * width * (1 if tied else 2)
    vision_width, grid = int(vision.hidden_size), int(vision.image_size) // int(vision.patch_size)
    tower = transformer_params(int(vision.num_hidden_layers), vision_width, int(vision.intermediate_size))
    patch_embed = 3 * int(vision.patch_size) ** 2 * vision_width + (grid * grid + 1) * vision_width
    projector = vision_width * width + width * width
    return ModelSpec("llava", layers, width, int(vision.image_size), int(vision.patch_size), False,
                     int(vision.num_hidden_layers), vision_width,
                     params=llm + embeddings + tower + patch_embed + projector,
                     flops=forward_flops(tower, grid * grid + 1) + forward_flops(llm, grid * grid + PROMPT_TOKENS))


def check_fixed_grid(where: str, raw: dict[str, Any]) -> None:
    """Refuse configs whose image tokens are not one fixed patch grid (anyres tiling, CLS kept)."""
    model_type = raw.get("model_type")
    if model_type in TILING_TYPES or "image_grid_pinpoints" in raw:
        raise UnknownModel(f"{where}: a {model_type} checkpoint tiles each image into a variable number of crops "
                           "(anyres), so its image tokens are not a fixed patch grid; only LLaVA-1.5-style "
                           "checkpoints (model_type llava: one 336-px CLIP grid) can be probed")
    if model_type != "llava":
        raise UnknownModel(f"{where}: config.json has model_type {model_type!r}, not a LlavaConfig (llava); "
                           "for a vision encoder alone use kind: hf_vision")
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise UnknownModel(f"{where}: vision_feature_select_strategy {strategy!r}; only 'default' (CLS dropped, "
                           "one token per patch) gives a patch grid")
