"""A tiny random-weight open_clip ViT, registered as an open_clip model config and saved to a
file, so the demo and tests load it with `pretrained=<file>` exactly like `pretrained="openai"`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def config_path(weights: str | Path) -> Path:
    """The open_clip model-config JSON stored beside the weights file."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".config")


def model_config(tiny: dict[str, Any]) -> dict[str, Any]:
    # One definition, shared with the DAG-time spec (which must not import open_clip for it).
    from ..specs.openclip import tiny_model_config

    return tiny_model_config(tiny)


def has_config(arch: str, weights: str | Path) -> bool:
    """A model config for `arch` stored beside a weights file (a tiny model, or one saved the same way)."""
    return (config_path(weights) / f"{arch}.json").is_file()


def register(arch: str, weights: str | Path) -> None:
    """Make `arch` known to open_clip from the JSON beside the weights (name = arch)."""
    import open_clip

    path = config_path(weights) / f"{arch}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tiny model config missing (was the build_tiny_model rule run?)")
    open_clip.add_model_config(path)


def build(arch: str, weights: str | Path, tiny: dict[str, Any]) -> Path:
    """Random weights (seeded) saved as a state dict; `mixing` scales each block's residual
    branches so that deeper layers differ more from the input than a plain random init would."""
    import open_clip
    import torch

    weights = Path(weights)
    cfg_dir = config_path(weights)
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{arch}.json").write_text(json.dumps(model_config(tiny), indent=2))
    open_clip.add_model_config(cfg_dir / f"{arch}.json")
    torch.manual_seed(tiny["seed"])
    model = open_clip.create_model(arch, pretrained=None)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.mlp.c_proj.weight.mul_(1.0 + tiny["mixing"])
            block.attn.out_proj.weight.mul_(1.0 + tiny["mixing"])
    torch.save(model.state_dict(), weights)
    return weights
