"""Image-text-to-text models (kind mllm): image-token states of vision tower, connector and LLM.

Keys as for LLaVA (docs/DESIGN.md): `layer_00` = the LLM's input embeddings with the image
features inserted, at the image positions; `layer_i` = output of decoder layer i before the final
norm (hooks: `output_hidden_states` applies the norm to its last entry); `projector` = the
connector's output as the LLM receives it (= layer_00's image rows); `vision_NN` = vision-tower
hidden state NN without CLS, averaged over the r x r patches each LLM token covers, in the
family's own merge order, so every key of a store shares one token grid.

One forward per batch, stopped by `StopForward` after the deepest needed module. Batches are
right-padded (each sample's positions as when alone); image positions come from `input_ids` by
the family's image token id, never from an offset. The processor gets the family's one-view
kwargs on every call and every output the model needs (token_type_ids, mm_token_type_ids, ...),
so no masking is left to the attention backend's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...data.geometry import fill_padding, padding_mask
from ..layers import PROJECTOR, layer_key, parse_key, vision_key
from ..prompts import IMAGE_TOKEN
from ..specs.mllm import Geometry, geometry
from ..specs.mllm_families import FAMILIES, Family, call_kwargs, image_token_id
from .base import Backbone, StopForward
from .llava import DTYPES, _first, _plain, _stop_key, image_positions

log = logging.getLogger("layerprobe.mllm")


def module_at(root: nn.Module, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name)
    return root


class MllmBackbone(Backbone):
    has_cls = False

    def __init__(self, name: str, hub_id: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str | None = None, prompt_format: str | None = None, image_size: int | None = None,
                 processor_kwargs: dict[str, Any] | None = None, cache_dir: str | None = None,
                 local_files_only: bool = False, revision: str | None = None) -> None:
        from transformers import AutoProcessor

        from . import dtype_name

        self.name, self.prompt_format = name, prompt_format
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = DTYPES[dtype_name(dtype, self.device.type, "mllm")]
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only,
               **({"revision": revision} if revision else {})}
        self.model = self._load(hub_id, attn_implementation, hub)
        self.processor = AutoProcessor.from_pretrained(hub_id, **hub)
        self.processor.tokenizer.padding_side = "right"  # InternVL's default is left
        self.config = self.model.config
        self.family: Family = FAMILIES[self.config.model_type]
        self.geometry: Geometry = geometry(f"models.{name}.hub_id", self.config,
                                           self.processor.image_processor.to_dict(), image_size,
                                           f"models.{name}.image_size")
        self.image_size, self.grid = self.geometry.image_size, self.geometry.grid
        self.image_token_id = image_token_id(self.config)
        self.call_kwargs = call_kwargs(self.family, self.geometry.tower_input, processor_kwargs)
        self.vision_blocks = module_at(self.model, self.family.vision_blocks)
        self.decoder_blocks = module_at(self.model, self.family.llm).layers
        if self.family.token_slice == "base_view":
            log.info("%s: base view only: the first %d image tokens of each image (the whole image at %d px); "
                     "the anyres tiles after them are computed by the model but dropped", name, self.grid ** 2,
                     self.image_size)

    def _load(self, hub_id: str, attn_implementation: str, hub: dict[str, Any]) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        extra = {"device_map": str(self.device)} if self.device.type == "cuda" else {}
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                hub_id, dtype=self.dtype, attn_implementation=attn_implementation, **extra, **hub)
        except ValueError as err:  # e.g. Gemma 2 (PaliGemma 2) has no SDPA path: the library's own choice
            if attn_implementation != "sdpa":
                raise
            log.info("%s: attn_implementation sdpa refused (%s); using the library's default", self.name, err)
            model = AutoModelForImageTextToText.from_pretrained(hub_id, dtype=self.dtype, **extra, **hub)
        return model.eval() if extra else model.to(self.device).eval()

    def dims(self) -> dict[str, int]:
        from ..specs.mllm import vision_dims

        vision_width, _ = vision_dims(self.config)
        width = int(self.config.text_config.hidden_size)
        out = {vision_key(i): vision_width for i in range(len(self.vision_blocks) + 1)}
        out[PROJECTOR] = width
        out.update({layer_key(i): width for i in range(len(self.decoder_blocks) + 1)})
        return out

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def texts(self, prompts: list[str]) -> list[str]:
        """The text of each sample: `prompt_format` with `<image>` as the family's placeholder, else
        the family's own chat template with content [image, prompt]."""
        if self.prompt_format is not None:
            template = self.prompt_format.replace(IMAGE_TOKEN, self.family.placeholder)
            return [template.replace("{prompt}", p) for p in prompts]
        if not self.family.chat_template:  # PaliGemma: the processor writes <image>*N <bos> prompt \n
            return [self.family.placeholder + p for p in prompts]
        return [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True, tokenize=False) for p in prompts]

    def inputs(self, images: torch.Tensor, prompts: list[str],
               boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Processor outputs (right-padded) for uint8 images (B, S, S, 3) already at image_size (padded
        at bottom/right to a larger tower input, pixels it never reads); `boxes` (pad geometry):
        what lies outside them becomes the processor's mean (0)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        if tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must be (B, {self.image_size}, {self.image_size}, 3) uint8, got "
                             f"{tuple(images.shape)}: the processor must not resize them")
        uncovered = self.geometry.tower_input - self.image_size  # pixels the tower never reads
        if uncovered:
            images = torch.nn.functional.pad(images, (0, 0, 0, uncovered, 0, uncovered))
        pictures = [[i] for i in images] if self.family.nested_images else list(images)
        batch = dict(self.processor(images=pictures, text=self.texts(prompts), padding=True, return_tensors="pt",
                                    **self.call_kwargs))
        batch.pop("labels", None)  # PaliGemma's training leftover
        missing = [k for k in self.family.extra_inputs if k not in batch]
        if missing:
            raise RuntimeError(f"{self.name}: the processor gave no {missing}; the model's masking and positions "
                               "depend on them")
        self._check_one_view(batch)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = self._fill(batch["pixel_values"], boxes, batch).to(self.dtype)
        return batch

    def _check_one_view(self, batch: dict[str, torch.Tensor]) -> None:
        """The processor kept the image whole at the tower's input size (one fixed grid)."""
        size, layout = self.geometry.tower_input, self.family.pixel_layout
        if layout == "qwen_patches":
            side = size // self.geometry.patch
            ok = bool((batch["image_grid_thw"] == torch.tensor([1, side, side])).all())
        else:
            pixels = batch["pixel_values"]
            ok = tuple(pixels.shape[-2:]) == (size, size)
            if self.family.token_slice == "all" and layout == "views":
                ok = ok and pixels.shape[1] == 1
        if not ok:
            raise RuntimeError(f"{self.name}: the processor did not keep each image as one {size}-px view "
                               f"(pixel_values {tuple(batch['pixel_values'].shape)}); its grid is not fixed")

    def _fill(self, pixels: torch.Tensor, boxes: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """fill_padding on the family's pixel layout: the whole image, view 0, or Qwen's patch rows."""
        if boxes is None:
            return pixels
        if self.family.pixel_layout == "image":
            return fill_padding(pixels, boxes)
        if self.family.pixel_layout == "views":
            pixels = pixels.clone()
            pixels[:, 0] = fill_padding(pixels[:, 0], boxes)
            return pixels
        g, patch, merge = self.geometry, self.geometry.patch, self.geometry.reduction
        side = g.patches_per_side // merge
        # A patch row holds (C, T, p, p) of patch (block row, block col, row in block, col in block).
        mask = padding_mask(boxes, g.image_size).view(-1, side, merge, patch, side, merge, patch)
        mask = mask.permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, 1, 1, patch, patch).to(pixels.device)
        rows = pixels.view(mask.shape[0], 3, -1, patch, patch)
        return rows.masked_fill(mask, 0.0).view_as(pixels)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, G*G) image positions per row: all of them, or the base view's (the first G*G)."""
        found = image_positions(input_ids, self.image_token_id)
        want = self.grid ** 2
        if found.shape[1] < want or (self.family.token_slice == "all" and found.shape[1] != want):
            raise ValueError(f"{self.name}: {found.shape[1]} image tokens per sample, expected {self.grid}x{self.grid}")
        return found[:, :want]

    # ----------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------

    def extract(self, images: torch.Tensor, prompts: list[str] | None, keys: list[str],
                dtype: torch.dtype = torch.float32,
                boxes: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.check_keys(keys)
        if not keys:
            return {}, {}
        if prompts is None:
            raise ValueError(f"{self.name}: a multimodal LLM needs one prompt per image")
        batch = self.inputs(images, prompts, boxes)
        positions = self.positions(batch["input_ids"])
        with torch.inference_mode():
            captured = self._forward(batch, positions, keys)
        return {k: _plain(captured[k], dtype) for k in keys}, {}

    def _forward(self, batch: dict[str, torch.Tensor], positions: torch.Tensor,
                 keys: list[str]) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        stop = _stop_key(keys)

        def keep(key: str, x: torch.Tensor) -> None:
            if key in keys:
                captured[key] = self.vision_tokens(x, batch) if parse_key(key)[0] == "vision" else x[rows, positions]
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
        """Pre-hooks on block 0 give the embeddings (key 00; for the LLM also the connector's
        output, inserted there); forward hooks give block outputs."""
        def pre(*keys: str) -> Callable:
            def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
                for key in keys:
                    keep(key, args[0] if args else kwargs["hidden_states"])
            return hook

        def post(key: str) -> Callable:
            return lambda m, args, out: keep(key, _first(out))

        hooks = [self.vision_blocks[0].register_forward_pre_hook(pre(vision_key(0)), with_kwargs=True),
                 self.decoder_blocks[0].register_forward_pre_hook(pre(PROJECTOR, layer_key(0)), with_kwargs=True)]
        hooks += [b.register_forward_hook(post(vision_key(i))) for i, b in enumerate(self.vision_blocks, 1)]
        hooks += [b.register_forward_hook(post(layer_key(i))) for i, b in enumerate(self.decoder_blocks, 1)]
        return hooks

    def vision_tokens(self, x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A vision block's output as (B, G*G, C) on the LLM's token grid: the image's own view,
        prefix tokens dropped, each token the mean of the r x r patches it covers."""
        g, r, samples = self.geometry, self.geometry.reduction, batch["input_ids"].shape[0]
        grid, width = g.grid, x.shape[-1]
        if self.family.pixel_layout == "qwen_patches":  # (B * patches, C), 2x2 blocks of patches in a row
            units = x.reshape(-1, r * r, width)
            if self.family.vision_order == "qwen_window":  # Qwen2.5-VL runs its blocks in window order
                units = units[torch.argsort(self._window_index(batch))]
            return units.reshape(samples, grid * grid, r * r, width).float().mean(2)
        views = x.reshape(samples, -1, *x.shape[1:])[:, 0, g.prefix:]  # the whole image's view, no CLS
        if r == 1:
            return views
        blocks = views.reshape(samples, grid, r, grid, r, width).float().mean((2, 4))
        return blocks.reshape(samples, grid * grid, width)

    def _window_index(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        vision = self.config.vision_config
        index, _ = get_vision_window_index(batch["image_grid_thw"], int(vision.spatial_merge_size),
                                           int(vision.window_size), int(vision.patch_size))
        return index.to(batch["input_ids"].device)
