"""One small table per multimodal-LLM family (kind mllm), keyed by config.json's `model_type`.

Read in transformers 5.23's source and checked on tiny random models (tests/test_mllm*.py):
- where the image tokens sit: the config attribute holding the placeholder's id;
- which attention the image tokens get: `causal` (a prompt after the image is invisible to them),
  `prefix_lm` (PaliGemma: image, `<bos>`, prompt and `\\n` see each other both ways, only when
  `token_type_ids` is passed) or `image_block_bidirectional` (Gemma 3: each image block both ways
  within itself, causal text);
- the processor call kwargs that fix one view, and which outputs the model needs besides
  input_ids, attention_mask and pixel_values;
- the module paths (under the ...ForConditionalGeneration) of the LLM, vision blocks and connector;
- how pixel_values are laid out (for the pad geometry's fill) and the vision blocks' token order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ATTENTIONS = ("causal", "prefix_lm", "image_block_bidirectional")
# Processor kwargs that resize or crop: the data store already gives each image at the spec's size.
GEOMETRY_KEYS = ("size", "crop_size", "max_image_size", "min_pixels", "max_pixels", "do_resize", "do_center_crop",
                 "do_pad", "image_grid_pinpoints", "patch_size", "merge_size", "resample")


@dataclass(frozen=True)
class Family:
    image_token_attrs: tuple[str, ...]  # config attributes holding the image placeholder's id, first set wins
    attention: str
    placeholder: str  # what `<image>` in a prompt_format becomes (the processor expands it)
    fixed_kwargs: dict[str, Any] = field(default_factory=dict)  # every processor call: one view
    tiling: str = ""  # what the fixed kwargs prevent (for the refusal)
    token_slice: str = "all"  # "base_view": the first G*G image positions (anyres tiles follow)
    extra_inputs: tuple[str, ...] = ()  # processor outputs the model must get
    llm: str = "model.language_model"  # holds .layers and .norm
    vision_blocks: str = "model.vision_tower.encoder.layers"
    connector: str = "model.multi_modal_projector"
    pixel_layout: str = "image"  # image (B, 3, S, S) | views (B, V, 3, S, S), view 0 whole | qwen_patches
    vision_order: str = "row_major"  # row_major | qwen_blocks (2x2 blocks) | qwen_window (blocks, windowed)
    nested_images: bool = False  # the processor wants one list of images per text
    chat_template: bool = True  # False: the processor builds the text itself (PaliGemma)
    sized_call: str = ""  # how to pass the tower's size on each call: "" | "height_width" | "longest_edge"


_QWEN = dict(image_token_attrs=("image_token_id",), attention="causal",
             placeholder="<|vision_start|><|image_pad|><|vision_end|>",
             extra_inputs=("image_grid_thw", "mm_token_type_ids"), vision_blocks="model.visual.blocks",
             connector="model.visual.merger", pixel_layout="qwen_patches")
_IDEFICS = dict(image_token_attrs=("image_token_id",), attention="causal", placeholder="<image>",
                fixed_kwargs={"do_image_splitting": False},
                tiling="splits the image into row-major tiles plus a global view",
                extra_inputs=("pixel_attention_mask",), llm="model.text_model",
                vision_blocks="model.vision_model.encoder.layers", connector="model.connector",
                pixel_layout="views", nested_images=True, sized_call="longest_edge")
_ANYRES = dict(image_token_attrs=("image_token_index", "image_token_id"), attention="causal", placeholder="<image>",
               token_slice="base_view", extra_inputs=("image_sizes",), pixel_layout="views")

FAMILIES: dict[str, Family] = {
    "paligemma": Family(("image_token_index", "image_token_id"), "prefix_lm", "<image>",
                        extra_inputs=("token_type_ids",), chat_template=False, sized_call="height_width"),
    "gemma3": Family(("image_token_index", "image_token_id"), "image_block_bidirectional", "<start_of_image>",
                     fixed_kwargs={"do_pan_and_scan": False},
                     tiling="adds pan-and-scan crops after the image, each its own block of tokens",
                     extra_inputs=("token_type_ids",), nested_images=True, sized_call="height_width"),
    "qwen2_vl": Family(**_QWEN, vision_order="qwen_blocks"),
    "qwen2_5_vl": Family(**_QWEN, vision_order="qwen_window"),
    "internvl": Family(("image_token_id",), "causal", "<IMG_CONTEXT>", fixed_kwargs={"crop_to_patches": False},
                       tiling="tiles the image into up to max_patches crops plus a thumbnail",
                       vision_blocks="model.vision_tower.encoder.layer", sized_call="height_width"),
    "idefics3": Family(**_IDEFICS),
    "smolvlm": Family(**_IDEFICS),  # its processor imports num2words (not a layerprobe dependency)
    "llava_next": Family(**_ANYRES),
    "llava_onevision": Family(**_ANYRES),
}


def image_token_id(config: Any) -> int | None:
    """The id of the image placeholder the processor expands, by the family's own attribute."""
    for attr in FAMILIES[config.model_type].image_token_attrs:
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    return None


def call_kwargs(family: Family, image_size: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Processor call kwargs: the config's own, then the family's fixed one-view settings and the
    tower's size (a square image already at that size is neither resized nor cropped)."""
    sized = {"height_width": {"size": {"height": image_size, "width": image_size}},
             "longest_edge": {"size": {"longest_edge": image_size},
                              "max_image_size": {"longest_edge": image_size}}}.get(family.sized_call, {})
    return {**(extra or {}), **family.fixed_kwargs, **sized}
