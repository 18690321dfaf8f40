"""Hugging Face vision encoders (DINOv2 with or without registers, SigLIP, CLIP): per-block patch
tokens and CLS from one forward.

layer_00 = the tokens entering encoder block 1 (embeddings; for CLIP after `pre_layrnorm`, as
open_clip's ln_pre); layer_i = output of encoder block i, before the final layernorm
(DINOv2 `layernorm`, SigLIP/CLIP `post_layernorm`). These are transformers' own
`output_hidden_states` entries (its hooks record each block's input/output, and none of these
families applies the final norm to hidden_states[-1]), but here hooks capture only the requested
ones and the hook of the deepest requested block raises StopForward, so later blocks, the final
norm and SigLIP's pooling head never run.

Token layout: [CLS, registers..., patches] (DINOv2 with registers), [CLS, patches] (DINOv2, CLIP),
[patches] (SigLIP). `tokens` keeps the patches only; `cls` holds CLS when the model has one.
Images are normalised with the checkpoint's own image processor's mean/std, at the processor's
input resolution (no resize: the data store is already at image_size).
"""

from __future__ import annotations

import torch
from torch import nn

from ...data.geometry import fill_padding
from ..layers import layer_key, parse_key
from ..specs.core import UnknownModel
from ..specs.hf_vision import FAMILIES, HAS_CLS, check_resolution, preprocessing, supported_types
from .base import Backbone, capture_blocks
from .llava import resolve_dtype


def model_class(family: str) -> type:
    """The transformers class holding the vision encoder of a family (a full SigLIP/CLIP checkpoint
    loads its vision tower through it)."""
    import transformers

    return getattr(transformers, {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel",
                                  "siglip": "SiglipVisionModel", "clip": "CLIPVisionModel"}[family])


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    # transformers 5 SigLIP/CLIP vision models hold `encoder` directly; older ones nest `vision_model`.
    encoder = getattr(model, "vision_model", model).encoder
    return encoder.layer if hasattr(encoder, "layer") else encoder.layers  # DINOv2: `layer`


class HfVisionBackbone(Backbone):
    def __init__(self, name: str, hub_id: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str | None = None, cache_dir: str | None = None, local_files_only: bool = False,
                 revision: str | None = None) -> None:
        from transformers import AutoConfig, AutoImageProcessor

        self.name = name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        where = f"models.{name}.hub_id"
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only,
               **({"revision": revision} if revision else {})}
        # Same calls for a hub id and a local directory (tiny test models).
        model_type = AutoConfig.from_pretrained(hub_id, **hub).model_type
        if model_type not in FAMILIES:
            raise UnknownModel(f"{where}: {hub_id} has model_type {model_type!r}; kind hf_vision supports "
                               f"{supported_types()}")
        self.family = FAMILIES[model_type]
        try:
            processor = AutoImageProcessor.from_pretrained(hub_id, **hub)
        except OSError as err:
            raise ValueError(f"{where}: cannot load the image processor of {hub_id} (preprocessor_config.json "
                             f"missing?), which gives the input size and mean/std: {err}") from None
        self.preprocessing = preprocessing(where, processor.to_dict())
        extra = {"device_map": str(self.device)} if self.device.type == "cuda" else {}
        model, info = model_class(self.family).from_pretrained(
            hub_id, dtype=self.dtype, attn_implementation=attn_implementation, output_loading_info=True, **extra,
            **hub)
        if info.get("missing_keys"):  # would be random weights (e.g. a checkpoint whose prefix is not mapped)
            raise ValueError(f"{where}: {hub_id} lacks weights of the {type(model).__name__} it loads into: "
                             f"{sorted(info['missing_keys'])[:5]}...")
        self.model = model.eval() if extra else model.to(self.device).eval()
        self.config = self.model.config
        self.patch_size = check_resolution(where, self.family, self.config, self.preprocessing.size)
        self.image_size = self.preprocessing.size
        self.grid = self.image_size // self.patch_size
        self.has_cls = HAS_CLS[self.family]
        self.registers = int(getattr(self.config, "num_register_tokens", 0)) \
            if self.family == "dinov2_with_registers" else 0
        self.width = int(self.config.hidden_size)
        self.blocks = encoder_blocks(self.model)
        self.mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.preprocessing.std, device=self.device).view(1, 3, 1, 1)

    def dims(self) -> dict[str, int]:
        return {layer_key(i): self.width for i in range(len(self.blocks) + 1)}

    def normalize(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """The pixel values the model is fed: the processor's rescale and mean/std (no resize)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
            raise ValueError(f"{self.name}: images must be (B, {self.image_size}, {self.image_size}, 3) uint8 "
                             f"(the image processor's input size), got {tuple(images.shape)}")
        x = images.to(self.device).permute(0, 3, 1, 2).float() * self.preprocessing.rescale
        return fill_padding((x - self.mean) / self.std, boxes).to(self.dtype)

    def extract(self, images: torch.Tensor, prompts: list[str] | None, keys: list[str],
                dtype: torch.dtype = torch.float32,
                boxes: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.check_keys(keys)
        if not keys:
            return {}, {}
        pixels = self.normalize(images, boxes)
        wanted = sorted({parse_key(k)[1] for k in keys})
        with torch.inference_mode():
            captured = self._forward(pixels, wanted)
        start = int(self.has_cls) + self.registers  # first patch token
        tokens = {layer_key(i): _plain(captured[i][:, start:], dtype) for i in wanted}
        cls = {layer_key(i): _plain(captured[i][:, 0], dtype) for i in wanted} if self.has_cls else {}
        return tokens, cls

    def _forward(self, pixels: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor]:
        return capture_blocks(self.blocks, wanted, lambda: self.model(pixel_values=pixels))


def _plain(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x = x.detach().to(dtype).to("cpu")
    return x.clone() if x.is_inference() else x
