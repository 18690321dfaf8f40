"""What the DAG needs to know about a model before any weights exist: the ModelSpec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..layers import PROJECTOR, layer_key, sort_keys, vision_key

# Kinds with an LLM after the image encoder: prompts, vision_NN and projector keys.
LLM_KINDS = ("llava", "mllm")


class UnknownModel(KeyError):
    """A model the config names that its library does not know, or whose config is not at hand.

    The message names the config key and where the known names come from."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # open_clip | llava | hf_vision | mllm
    depth: int  # ViT blocks (open_clip, hf_vision) or LLM decoder layers (llava, mllm)
    dim: int
    image_size: int
    patch_size: int  # pixels per token side; mllm: vision patch x reduction (one LLM image token)
    has_cls: bool
    vision_depth: int = 0  # vision tower (llava, mllm)
    vision_dim: int = 0
    params: float = 0.0  # parameters the loading code builds (RAM requests)
    flops: float = 0.0  # forward FLOPs per image to the deepest layer (the plan's throughput)
    attention: str = ""  # what image tokens attend to (llava, mllm): causal | prefix_lm | image_block_bidirectional
    reduction: int = 1  # mllm: vision patches per LLM token side (merge, pixel shuffle, pooling)
    family: str = ""  # mllm: the checkpoint's model_type

    @property
    def image_attention(self) -> str:
        """What image tokens attend to; LLaVA-1.5 is causal (its spec leaves the field empty)."""
        return self.attention or ("causal" if self.kind == "llava" else "")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def dims(self) -> dict[str, int]:
        out = {layer_key(i): self.dim for i in range(self.depth + 1)}
        if self.kind in LLM_KINDS:
            out.update({vision_key(i): self.vision_dim for i in range(self.vision_depth + 1)})
            out[PROJECTOR] = self.dim
        return out


def requested_keys(model: dict[str, Any]) -> list[str]:
    """Layer keys a model's config asks for, in forward order."""
    keys = [layer_key(i) for i in model["layers"]]
    keys += [vision_key(i) for i in model.get("vision_layers", [])]
    if model.get("projector"):
        keys.append(PROJECTOR)
    return sort_keys(keys)


def transformer_params(layers: int, width: int, mlp: int, kv_width: int | None = None, gated: bool = False) -> float:
    """Weights of `layers` pre-norm transformer blocks: attention (q, o at width; k, v at kv_width)
    and an MLP (two matrices, three when gated as in Llama); norms and biases are negligible."""
    kv = width if kv_width is None else kv_width
    return layers * (2 * width * width + 2 * width * kv + (3 if gated else 2) * width * mlp)


def forward_flops(block_params: float, tokens: int) -> float:
    """2 FLOPs per weight per token: the matmuls that dominate a transformer forward."""
    return 2.0 * block_params * tokens
