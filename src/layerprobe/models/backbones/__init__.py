"""Frozen backbones behind one interface (base.Backbone); build one with ``load_backbone``."""

from __future__ import annotations

from typing import Any

from .base import Backbone


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def dtype_name(dtype: str, device_type: str, kind: str | None = None) -> str:
    """The dtype a forward runs in: 'auto' is fp16 on CUDA and fp32 on CPU (fp16 matmuls on CPU
    are slow or unsupported). Features are stored as float16 either way. Multimodal LLMs (kind
    mllm) run bf16 on CUDA: they are released in bf16, and Gemma-family activations overflow fp16."""
    if dtype == "auto":
        if device_type != "cuda":
            return "float32"
        return "bfloat16" if kind == "mllm" else "float16"
    return dtype


def compute_precision(model: dict[str, Any], device: str) -> dict[str, str]:
    """{"dtype", "device"} a model's forward runs with on `device` (a resolved device): what a
    store records, so that a part on another kind of node never mixes precisions into it."""
    device_type = device.split(":")[0]
    dtype = "float32" if model["kind"] == "open_clip" else dtype_name(model.get("dtype", "auto"), device_type,
                                                                       model["kind"])
    return {"dtype": dtype, "device": device_type}


def load_backbone(name: str, model: dict[str, Any], device: str = "auto", cache_dir: str | None = None,
                  offline: bool = False, revision: str | None = None) -> Backbone:
    """Load a configured model by its real loading code (hub id / 'openai' / local path).

    `cache_dir`: where fetched weights live (config `weights.cache_dir`); `offline`: read only
    from there (see layerprobe.models.weights), never download; `revision`: the hub commit to load (the
    one the fingerprint names).
    """
    device = resolve_device(device)
    if model["kind"] == "open_clip":
        from ..tiny import openclip as tiny_clip
        from .openclip import OpenClipBackbone

        if model.get("tiny") is not None or tiny_clip.has_config(model["arch"], model["pretrained"]):
            tiny_clip.register(model["arch"], model["pretrained"])  # an architecture saved beside its weights
        return OpenClipBackbone(name, model["arch"], model["pretrained"], device, cache_dir=cache_dir)
    if model["kind"] == "hf_vision":
        from .hf_vision import HfVisionBackbone

        return HfVisionBackbone(name, model["hub_id"], dtype=model.get("dtype", "auto"),
                                attn_implementation=model.get("attn_implementation", "sdpa"), device=device,
                                cache_dir=cache_dir, local_files_only=offline, revision=revision)
    if model["kind"] == "mllm":
        from .mllm import MllmBackbone

        return MllmBackbone(name, model["hub_id"], dtype=model.get("dtype", "auto"),
                            attn_implementation=model.get("attn_implementation", "sdpa"), device=device,
                            prompt_format=model.get("prompt_format"), image_size=model.get("image_size"),
                            processor_kwargs=model.get("processor_kwargs"), cache_dir=cache_dir,
                            local_files_only=offline, revision=revision)
    from .llava import LlavaBackbone

    return LlavaBackbone(name, model["hub_id"], dtype=model["dtype"], attn_implementation=model["attn_implementation"],
                         device=device, prompt_format=model["prompt_format"], cache_dir=cache_dir,
                         local_files_only=offline, revision=revision)
