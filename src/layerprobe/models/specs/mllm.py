"""Image-text-to-text models (kind mllm): the spec read from the checkpoint's own config.json and
image-processor config, per `model_type` (one `Family` each, `mllm_families`).

Convention for the rest of the pipeline: `ModelSpec.patch_size` is the pixels per side of one LLM
image token (vision patch x reduction), so `grid` is tokens per side, and stores, probes, the
scan and the plan work unchanged. `reduction` is the vision patches per token side (a 2x2 merge,
a pixel shuffle, an average pool); vision_NN keys are means over each token's r x r patches.

A tower whose input is not a whole number of patches (SigLIP-384 at patch 14: 27 patches cover
378 px) never reads its last pixels: `image_size` is then the covered square (378), the data
store's resolution, and the backbone pads it at the bottom and right to the tower's input size
(384), so the processor resizes nothing and every token's cell is exact.

A setting that cannot give one fixed token grid is refused here, at DAG build, naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .core import ModelSpec, UnknownModel, forward_flops, transformer_params
from .hub import find_json, read_json
from .mllm_families import FAMILIES, GEOMETRY_KEYS, Family, image_token_id

PROMPT_TOKENS = 40  # text tokens beside the image in a typical probe prompt (FLOPs estimate)
SIZED_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # the resolution is free: models.<name>.image_size fixes it


@dataclass(frozen=True)
class Geometry:
    """How one square image becomes the LLM's grid of image tokens."""

    image_size: int  # the square the patches cover, in pixels (the data store's resolution)
    patch: int  # vision patch side in pixels
    reduction: int  # vision patches per LLM token side
    prefix: int  # tokens before the patches in a vision block's output (CLS), dropped
    input_size: int = 0  # the tower's input side (image_size padded at bottom/right); 0: image_size

    @property
    def tower_input(self) -> int:
        return self.input_size or self.image_size

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch

    @property
    def grid(self) -> int:
        return self.patches_per_side // self.reduction


def family_of(where: str, model_type: str | None) -> Family:
    if model_type not in FAMILIES:
        raise UnknownModel(f"{where}: config.json has model_type {model_type!r}; kind mllm supports "
                           f"{sorted(FAMILIES)} (LLaVA-1.5: kind llava; a vision encoder alone: kind hf_vision)")
    return FAMILIES[model_type]


def config_object(where: str, raw: dict[str, Any]) -> Any:
    """The transformers config of a config.json dict (library defaults fill omitted fields)."""
    family_of(where, raw.get("model_type"))
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**raw)
    except (TypeError, ValueError, KeyError) as err:
        raise UnknownModel(f"{where}: config.json cannot be read as a {raw.get('model_type')} config: {err}") from None


def processor_config(where: str, hub_id: str, cache_dir: str | None) -> dict[str, Any]:
    """The image processor's settings: preprocessor_config.json (hub checkpoints), else the
    `image_processor` entry of processor_config.json (what transformers 5 saves)."""
    if find_json(hub_id, "preprocessor_config.json", cache_dir) is not None:
        return read_json(where, hub_id, "preprocessor_config.json", cache_dir)
    if find_json(hub_id, "processor_config.json", cache_dir) is not None:
        return dict(read_json(where, hub_id, "processor_config.json", cache_dir).get("image_processor") or {})
    return read_json(where, hub_id, "preprocessor_config.json", cache_dir)  # raises, naming where it looked


def _side(value: Any) -> int:
    """One side of a square size: an int or a [h, w] pair (InternVL writes lists)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{value} is not square")
        return int(value[0])
    return int(value)


def geometry(where: str, config: Any, processor: dict[str, Any], image_size: int | None,
             key: str = "image_size") -> Geometry:
    """The fixed grid of a loaded config; `image_size` is models.<name>.image_size (Qwen only),
    `key` the config key that names it, for the errors."""
    model_type = config.model_type
    vision = config.vision_config
    if model_type in SIZED_FAMILIES:
        return _qwen_geometry(key, vision, processor, image_size)
    if image_size is not None:
        raise UnknownModel(f"config key {key}: only for {list(SIZED_FAMILIES)}; the tower of this {model_type} "
                           f"checkpoint takes one input size, {_side(vision.image_size)} px")
    side, patch = _side(vision.image_size), _side(vision.patch_size)
    patches = side // patch  # a stride-`patch` convolution: the last side % patch pixels are never read
    reduction, prefix = _reduction(where, config, patches)
    if patches % reduction:
        raise UnknownModel(f"{where}: {patches} patches per side do not split into {reduction}x{reduction} "
                           "blocks, so the image tokens are not a whole grid")
    return Geometry(patches * patch, patch, reduction, prefix, side)


def _reduction(where: str, config: Any, patches: int) -> tuple[int, int]:
    """(patches per token side, prefix tokens) of the families without a free resolution."""
    model_type = config.model_type
    if model_type == "gemma3":
        side = math.isqrt(int(config.mm_tokens_per_image))
        if side * side != int(config.mm_tokens_per_image) or patches % side:
            raise UnknownModel(f"{where}: mm_tokens_per_image {config.mm_tokens_per_image} is not a square grid "
                               f"that divides {patches} patches per side")
        return patches // side, 0
    if model_type == "internvl":
        if config.vision_feature_select_strategy != "default":
            raise UnknownModel(f"{where}: vision_feature_select_strategy {config.vision_feature_select_strategy!r}; "
                               "the pixel shuffle needs the CLS dropped ('default')")
        return round(1 / float(config.downsample_ratio)), 1
    if model_type in ("idefics3", "smolvlm"):
        return int(config.scale_factor), 0
    if model_type in ("llava_next", "llava_onevision"):
        strategy = config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise UnknownModel(f"{where}: vision_feature_select_strategy {strategy!r} is not one token per patch")
        return 1, 1 if strategy == "default" else 0
    return 1, 0  # paligemma: one token per SigLIP patch


def _qwen_geometry(key: str, vision: Any, processor: dict[str, Any], image_size: int | None) -> Geometry:
    patch, merge = int(vision.patch_size), int(vision.spatial_merge_size)
    step = patch * merge
    why = (f"smart_resize keeps each image's aspect ratio and rounds its sides to multiples of {step}, so one "
           f"fixed grid needs every image pre-resized to one square whose side is a multiple of {step} "
           f"(e.g. {12 * step} px -> 12x12 tokens)")
    if image_size is None:
        raise UnknownModel(f"config key {key}: required for Qwen2-VL/Qwen2.5-VL: {why}")
    if image_size % step:
        raise UnknownModel(f"config key {key}: {image_size} is not a multiple of {step}: {why}")
    low, high = _pixel_bounds(processor)
    if not low <= image_size * image_size <= high:
        raise UnknownModel(f"config key {key}: {image_size}^2 pixels is outside the processor's [{low}, {high}] "
                           "(min_pixels, max_pixels): smart_resize would rescale it off the grid")
    return Geometry(image_size, patch, merge, 0)


def _pixel_bounds(processor: dict[str, Any]) -> tuple[int, int]:
    """Qwen's (min_pixels, max_pixels): top-level keys on the hub, `size` edges in transformers 5."""
    size = processor.get("size") or {}
    low = processor.get("min_pixels") or size.get("shortest_edge") or 56 * 56
    high = processor.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
    return int(low), int(high)


def check_processor_kwargs(key: str, family: Family, kwargs: dict[str, Any]) -> None:
    """models.<name>.processor_kwargs may not undo a family's one-view setting nor resize."""
    for name, value in kwargs.items():
        if name in family.fixed_kwargs and value != family.fixed_kwargs[name]:
            raise UnknownModel(f"config key {key}.{name}: {value!r} {family.tiling}, so the image tokens are not "
                               f"one fixed grid; layerprobe passes {name}={family.fixed_kwargs[name]!r} on every call")
        if name in GEOMETRY_KEYS:
            raise UnknownModel(f"config key {key}.{name}: the data store already gives each image at the spec's "
                               "image_size; a processor that resizes or crops it moves the token grid off the labels")


def mllm_spec(name: str, model: dict[str, Any], cache_dir: str | None) -> ModelSpec:
    where = f"models.{name}.hub_id"
    raw = read_json(where, model["hub_id"], "config.json", cache_dir)
    config = config_object(where, raw)
    family = FAMILIES[config.model_type]
    # The checkpoint's own file must name it: a library default need not match its tokenizer.
    if all(raw.get(attr) is None for attr in family.image_token_attrs) or image_token_id(config) is None:
        raise UnknownModel(f"{where}: config.json of {model['hub_id']} ({config.model_type}) has no image token id "
                           f"({' / '.join(family.image_token_attrs)}): its image positions cannot be found")
    check_processor_kwargs(f"models.{name}.processor_kwargs", family, model.get("processor_kwargs") or {})
    processor = processor_config(where, model["hub_id"], cache_dir)
    grid = geometry(where, config, processor, model.get("image_size"), f"models.{name}.image_size")
    return spec_from_config(config, processor, grid)


def spec_from_config(config: Any, processor: dict[str, Any], grid: Geometry) -> ModelSpec:
    family, text = FAMILIES[config.model_type], config.text_config
    vision_width, vision_depth = vision_dims(config)
    width, layers = int(text.hidden_size), int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or width // heads)
    kv_width = int(getattr(text, "num_key_value_heads", None) or heads) * head_dim
    llm = transformer_params(layers, width, int(text.intermediate_size), kv_width=kv_width, gated=True)
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    embeddings = int(text.vocab_size) * width * (1 if tied else 2)
    tower = transformer_params(vision_depth, vision_width, _vision_mlp(config, vision_width))
    patches = grid.patches_per_side ** 2
    connector = vision_width * grid.reduction ** 2 * width + width * width
    views, llm_tokens = _views_and_llm_tokens(config, processor, grid)
    return ModelSpec("mllm", layers, width, grid.image_size, grid.patch * grid.reduction, False, vision_depth,
                     vision_width, params=llm + embeddings + tower + 3 * grid.patch ** 2 * vision_width + connector,
                     flops=views * forward_flops(tower, patches + grid.prefix)
                     + forward_flops(llm, llm_tokens + PROMPT_TOKENS),
                     attention=family.attention, reduction=grid.reduction, family=config.model_type)


def vision_dims(config: Any) -> tuple[int, int]:
    """(width, blocks) of the vision tower: Qwen2-VL calls its width embed_dim and its depth depth."""
    vision = config.vision_config
    if config.model_type == "qwen2_vl":
        return int(vision.embed_dim), int(vision.depth)
    return int(vision.hidden_size), int(getattr(vision, "depth", None) or vision.num_hidden_layers)


def _vision_mlp(config: Any, width: int) -> int:
    vision = config.vision_config
    if config.model_type == "qwen2_vl":
        return int(width * float(vision.mlp_ratio))
    return int(vision.intermediate_size)


def _views_and_llm_tokens(config: Any, processor: dict[str, Any], grid: Geometry) -> tuple[int, int]:
    """Vision forwards per image and image tokens the LLM reads. LLaVA-NeXT/OneVision also encode
    the anyres tiles of the best canvas (dropped from the store, but computed): for a square image
    they add G rows of G tokens and a newline each."""
    g = grid.grid
    if FAMILIES[config.model_type].token_slice != "base_view":
        return 1, g * g
    pinpoints = processor.get("image_grid_pinpoints") or getattr(config, "image_grid_pinpoints", None) or []
    tiles = 2
    if pinpoints:
        from transformers.image_processing_utils import select_best_resolution

        side = grid.tower_input
        height, width = select_best_resolution((side, side), pinpoints)
        tiles = max(1, (height // side) * (width // side))
    return 1 + tiles, g * g + g * (g + 1)
