"""Config checks of the LLM kinds' own keys and of an mllm's prompt placement, called by
`layerprobe.config` (every error names its config key)."""

from __future__ import annotations

from typing import Any

from .config import MLLM_KEYS, ConfigError
from .models.prompts import IMAGE_TOKEN
from .models.specs import ModelSpec

BLIND_TO_A_LATER_PROMPT = {
    "causal": "causal attention",
    "image_block_bidirectional": "image-block attention (each image block both ways within itself, causal to text)",
}


def check_kind_keys(where: str, model: dict[str, Any]) -> None:
    """llava takes no mllm keys; mllm is a hub id or a saved directory, never a `tiny` block."""
    if model["kind"] == "llava":
        for key in MLLM_KEYS:
            if key in model:
                raise ConfigError(f"config key {where}.{key}: only for kind mllm")
        return
    if model.get("tiny") is not None:
        raise ConfigError(f"config key {where}.tiny: not for kind mllm (build one with "
                          "layerprobe.models.tiny.mllm.build_tiny_mllm and give its directory as hub_id)")
    for key in ("arch", "pretrained"):
        if key in model:
            raise ConfigError(f"config key {where}.{key}: only for kind open_clip")


def prompt_after_image(model: dict[str, Any]) -> bool:
    """Whether the prompt follows the image: the families' own templates all put the image first."""
    fmt = model.get("prompt_format")
    return fmt is None or fmt.index(IMAGE_TOKEN) < fmt.index("{prompt}")


def check_placement(where: str, model: dict[str, Any], spec: ModelSpec, stores: int) -> None:
    """Several prompts (or category fills) need image tokens that can see the prompt: refused when
    it comes after the image and the family's attention hides it from them (all but PaliGemma's
    prefix-LM), since every store would hold identical image-token states."""
    if stores < 2 or not prompt_after_image(model) or spec.image_attention not in BLIND_TO_A_LATER_PROMPT:
        return
    placed = ("the family's chat template puts the image before the prompt" if model.get("prompt_format") is None
              else "the image comes before the prompt")
    raise ConfigError(f"config key {where}.prompt_format: {placed}, and under {spec.family}'s "
                      f"{BLIND_TO_A_LATER_PROMPT[spec.image_attention]} image-token states cannot depend on it; "
                      f"{stores} prompts (or category fills) would give identical features. Give a prompt_format "
                      "with {prompt} before <image> to condition on the prompt, or keep one prompt and one fill.")
