"""LLaVA-1.5 (transformers): image-token states of vision tower, projector and LLM layers.

Keys (docs/DESIGN.md): `vision_NN` = vision-tower hidden state NN without CLS (0 = embeddings
after pre-LayerNorm), `projector` = projector output, `layer_00` = LLM input embeddings with the
image features inserted, `layer_i` = output of decoder layer i before the final RMSNorm (which
`output_hidden_states` applies to its last entry, so hooks are used instead).

Everything comes from one forward: hooks store the rows of interest and the hook of the last
needed module raises `StopForward`, so deeper layers, the final norm and the lm_head never run.
Batches are right-padded so that each sample's tokens sit at the same positions (and get the same
position ids) as when processed alone; image positions are read from `input_ids`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, LlavaForConditionalGeneration

from ...data.geometry import fill_padding
from ..layers import PROJECTOR, layer_key, parse_key, vision_key
from ..prompts import DEFAULT_FORMAT, wrap_prompt
from .base import Backbone, StopForward

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means fp16 on CUDA and fp32 on CPU (fp16 matmuls on CPU are slow or unsupported)."""
    from . import dtype_name

    name = dtype_name(dtype, device.type)
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def image_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(B, n) indices of the image tokens in each row; every row must hold the same number n."""
    mask = input_ids == image_token_id
    counts = mask.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"rows hold different numbers of image tokens: {counts.tolist()}")
    n = int(counts[0]) if counts.numel() else 0
    return mask.nonzero()[:, 1].view(input_ids.shape[0], n)  # nonzero is row-major: sorted per row


def _vision_layers(tower: nn.Module) -> nn.ModuleList:
    # transformers 5 CLIPVisionModel holds `encoder` directly; older ones nest it in `vision_model`.
    inner = getattr(tower, "vision_model", tower)
    return inner.encoder.layers


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class LlavaBackbone(Backbone):
    has_cls = False

    def __init__(self, name: str, hub_id: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str | None = None, prompt_format: str = DEFAULT_FORMAT, cache_dir: str | None = None,
                 local_files_only: bool = False, revision: str | None = None) -> None:
        self.name, self.prompt_format = name, prompt_format
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        # Same call for a hub id and a local directory (tiny demo model).
        extra = {"device_map": str(self.device)} if self.device.type == "cuda" else {}
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only,
               **({"revision": revision} if revision else {})}
        model = LlavaForConditionalGeneration.from_pretrained(
            hub_id, dtype=self.dtype, attn_implementation=attn_implementation, **extra, **hub)
        self.model = model.eval() if extra else model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(hub_id, **hub)
        # Right padding keeps every sample's positions (and position ids) as if it were alone.
        self.processor.tokenizer.padding_side = "right"
        self.config = self.model.config
        vision = self.config.vision_config
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError(f"{name}: only vision_feature_select_strategy='default' (CLS dropped) is supported")
        self.image_size, self.patch_size = int(vision.image_size), int(vision.patch_size)
        self.grid = self.image_size // self.patch_size
        self.image_token_id = int(self.config.image_token_id)
        inner = self.model.model
        self.vision_blocks = _vision_layers(inner.vision_tower)
        self.projector = inner.multi_modal_projector
        self.decoder_blocks = inner.language_model.layers

    def dims(self) -> dict[str, int]:
        text, vision = self.config.text_config, self.config.vision_config
        out = {vision_key(i): int(vision.hidden_size) for i in range(len(self.vision_blocks) + 1)}
        out[PROJECTOR] = int(text.hidden_size)
        out.update({layer_key(i): int(text.hidden_size) for i in range(len(self.decoder_blocks) + 1)})
        return out

    def inputs(self, images: torch.Tensor, prompts: list[str],
               boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Processor inputs (right-padded batch) for uint8 images (B, H, W, 3) and filled prompts;
        `boxes`: the padding outside them becomes the processor's image_mean (see Backbone.extract)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        if tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
            # The processor would silently resize; the data store must already be at image_size.
            raise ValueError(f"images must be (B, {self.image_size}, {self.image_size}, 3) uint8, "
                             f"got {tuple(images.shape)}")
        texts = [wrap_prompt(p, self.prompt_format) for p in prompts]
        batch = self.processor(images=list(images), text=texts, padding=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = fill_padding(batch["pixel_values"], boxes).to(self.dtype)
        return batch

    def extract(self, images: torch.Tensor, prompts: list[str] | None, keys: list[str],
                dtype: torch.dtype = torch.float32,
                boxes: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.check_keys(keys)
        if not keys:
            return {}, {}
        if prompts is None:
            raise ValueError(f"{self.name}: LLaVA needs one prompt per image")
        batch = self.inputs(images, prompts, boxes)
        positions = image_positions(batch["input_ids"], self.image_token_id)
        if positions.shape[1] != self.grid * self.grid:
            raise ValueError(f"{positions.shape[1]} image tokens per sample, expected {self.grid}x{self.grid}")
        with torch.inference_mode():
            captured = self._forward(batch, positions, keys)
        # Plain (non-inference) CPU tensors, usable with autograd by callers; cast on the device.
        return {k: _plain(captured[k], dtype) for k in keys}, {}

    def _forward(self, batch: dict[str, torch.Tensor], positions: torch.Tensor,
                 keys: list[str]) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        stop = _stop_key(keys)

        def keep(key: str, x: torch.Tensor) -> None:
            kind = parse_key(key)[0]
            if key in keys:
                # Keep only image-token rows: vision drops CLS, LLM states are gathered.
                captured[key] = x[:, 1:] if kind == "vision" else x if kind == PROJECTOR else x[rows, positions]
            if key == stop:
                raise StopForward

        hooks = self._hooks(keep)
        try:
            self.model.model(**batch, use_cache=False)
        except StopForward:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def _hooks(self, keep: Callable[[str, torch.Tensor], None]) -> list[Any]:
        """Pre-hooks on block 0 give the embeddings (key 00); forward hooks give block outputs."""
        def pre(key: str) -> Callable:
            return lambda m, args, kwargs: keep(key, args[0] if args else kwargs["hidden_states"])

        def post(key: str) -> Callable:
            return lambda m, args, out: keep(key, _first(out))

        hooks = [self.vision_blocks[0].register_forward_pre_hook(pre(vision_key(0)), with_kwargs=True),
                 self.projector.register_forward_hook(post(PROJECTOR)),
                 self.decoder_blocks[0].register_forward_pre_hook(pre(layer_key(0)), with_kwargs=True)]
        hooks += [b.register_forward_hook(post(vision_key(i))) for i, b in enumerate(self.vision_blocks, 1)]
        hooks += [b.register_forward_hook(post(layer_key(i))) for i, b in enumerate(self.decoder_blocks, 1)]
        return hooks


def _stop_key(keys: list[str]) -> str:
    """The last module the forward must reach: deepest LLM layer, else projector, else vision."""
    rank = {"vision": 0, PROJECTOR: 1, "layer": 2}
    return max(keys, key=lambda k: (rank[parse_key(k)[0]], parse_key(k)[1]))


def _plain(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = x.detach().to(dtype).to("cpu")
    return x.clone() if x.is_inference() else x
