"""Shared by the kind-mllm tests: the tiny families built once per test module, loaded by path."""

from __future__ import annotations

from pathlib import Path

import torch

from layerprobe.models.backbones.mllm import MllmBackbone, module_at
from layerprobe.models.tiny.mllm import BUILDERS, QWEN_IMAGE_SIZE, build_tiny_mllm

FAMILIES = list(BUILDERS)  # paligemma, paligemma2, gemma3, qwen2_vl, qwen2_5_vl, internvl, idefics3, llava_next, ...
TOWER = {"qwen2_vl": "model.visual", "qwen2_5_vl": "model.visual", "idefics3": "model.vision_model"}
PROMPT_FIRST = "User: {prompt}\n<image>\nAssistant:"


def image_size_key(family: str) -> int | None:
    """models.<name>.image_size: required for the Qwen families, refused for the others."""
    return QWEN_IMAGE_SIZE if family.startswith("qwen") else None


def build_all(root: Path) -> dict[str, Path]:
    return {family: build_tiny_mllm(root / family, family) for family in FAMILIES}


def load(path: Path, family: str, **kwargs: object) -> MllmBackbone:
    return MllmBackbone(family, str(path), device="cpu", image_size=image_size_key(family), **kwargs)


def images(bb: MllmBackbone, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, bb.image_size, bb.image_size, 3), dtype=torch.uint8, generator=g)


def tower_states(bb: MllmBackbone, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The vision tower's own output_hidden_states for the image's own view (sample 0)."""
    family = bb.config.model_type
    tower = module_at(bb.model, TOWER.get(family, "model.vision_tower"))
    pixels = batch["pixel_values"]
    with torch.no_grad():
        if family.startswith("qwen"):
            return tower(pixels, grid_thw=batch["image_grid_thw"], output_hidden_states=True).hidden_states
        if pixels.dim() == 5:  # views: the image's own view is the first
            pixels = pixels[:, 0]
        return tower(pixels, output_hidden_states=True).hidden_states


def reference_vision_grid(bb: MllmBackbone, state: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(G*G, C) of sample 0 from a tower hidden state, token by token from each patch's coordinates
    (written out independently of the backbone's reshapes)."""
    g = bb.geometry
    r, grid, side = g.reduction, g.grid, g.patches_per_side
    family = bb.config.model_type
    slot = list(range(grid * grid))
    if family == "qwen2_5_vl":  # window order: row-major unit t sits at slot argsort(window_index)[t]
        slot = torch.argsort(bb._window_index(batch)).tolist()
    rows = []
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        patches = []
        for i in range(r):
            for j in range(r):
                if family.startswith("qwen"):  # 2x2 blocks of patches, one after the other
                    patches.append(state[slot[token] * r * r + i * r + j])
                else:
                    patches.append(state[0, g.prefix + (row * r + i) * side + col * r + j])
        rows.append(torch.stack(patches).mean(0))
    return torch.stack(rows)


def local_vision(bb: MllmBackbone) -> MllmBackbone:
    """Zero the output projection of every vision-attention module: each vision block then acts on
    each patch alone, so a pixel reaches only its own patch's (and token's) features."""
    zeroed = 0
    for parent in module_at(bb.model, TOWER.get(bb.config.model_type, "model.vision_tower")).modules():
        if "attention" not in type(parent).__name__.lower():
            continue
        for name, child in parent.named_children():
            if name in ("out_proj", "proj", "projection_layer") and isinstance(child, torch.nn.Linear):
                with torch.no_grad():
                    child.weight.zero_()
                    if child.bias is not None:
                        child.bias.zero_()
                zeroed += 1
    assert zeroed == len(bb.vision_blocks), zeroed
    return bb
