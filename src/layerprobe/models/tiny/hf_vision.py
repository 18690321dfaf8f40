"""Tiny random-weight Hugging Face vision encoders built fully offline (tests and demos).

Each builder saves the model and its image processor with `save_pretrained`, like a hub snapshot,
so `HfVisionBackbone` and `model_spec` load the directory by path with exactly the calls used for
a hub id (`facebook/dinov2-large`, `google/siglip-base-patch16-224`, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _save(model: torch.nn.Module, processor, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _dinov2_processor(image_size: int) -> BitImageProcessor:
    # As the real DINOv2 processors: resize the short side, then center-crop to the input size.
    return BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                             do_center_crop=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                             do_convert_rgb=True)


def build_dinov2(out: str | Path, *, registers: int = 0, width: int = 32, layers: int = 3, heads: int = 2,
                 patch_size: int = 4, image_size: int = 28, config_image_size: int = 36, seed: int = 0) -> Path:
    """DINOv2 (`registers` > 0: DINOv2 with registers). `config_image_size` differs from the
    processor's `image_size` as in the real checkpoints (518 vs 224): positions are interpolated."""
    torch.manual_seed(seed)
    common = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4,
                  patch_size=patch_size, image_size=config_image_size, layerscale_value=1.0)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
        # Zero-initialised by default: random registers make them distinguishable from CLS/patches.
        with torch.no_grad():
            model.embeddings.register_tokens.normal_()
    else:
        model = Dinov2Model(Dinov2Config(**common))
    return _save(model.eval(), _dinov2_processor(image_size), out)


def build_siglip(out: str | Path, *, width: int = 32, layers: int = 3, heads: int = 2, patch_size: int = 8,
                 image_size: int = 32, seed: int = 0) -> Path:
    """A full SigLIP checkpoint (tiny text tower too), as google/siglip-* on the hub: the backbone
    loads only its vision part."""
    torch.manual_seed(seed)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                  patch_size=patch_size, image_size=image_size)
    text = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1, num_attention_heads=heads,
                vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    return _save(model.eval(), processor, out)


def build_clip_vision(out: str | Path, *, width: int = 32, layers: int = 3, heads: int = 2, patch_size: int = 8,
                      image_size: int = 32, full: bool = False, seed: int = 0) -> Path:
    """A CLIP vision tower alone (model_type clip_vision_model), or with `full` a whole CLIP
    checkpoint (model_type clip, tiny text tower too) as openai/clip-* on the hub."""
    torch.manual_seed(seed)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                  patch_size=patch_size, image_size=image_size, projection_dim=width, hidden_act="quick_gelu")
    if full:
        text = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1, num_attention_heads=heads,
                    vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size}, do_center_crop=True,
                                   image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return _save(model.eval(), processor, out)


BUILDERS = {
    "dinov2_with_registers": lambda out, **kw: build_dinov2(out, registers=kw.pop("registers", 4), **kw),
    "dinov2": build_dinov2,
    "siglip": build_siglip,
    "clip": build_clip_vision,
    "clip_full": lambda out, **kw: build_clip_vision(out, full=True, **kw),
}
