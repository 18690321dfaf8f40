"""Layer naming convention, fixed once for every model (see docs/DESIGN.md).

layer_00 is the input to the first block (embeddings); layer_i is the output of block i
(1-based). For LLaVA, ``layer_*`` are LLM decoder layers (pre final norm), ``vision_*`` are
vision-tower states with the same numbering, and ``projector`` is the projector output.
"""

from __future__ import annotations

import re

PROJECTOR = "projector"
_KEY = re.compile(r"^(layer|vision)_(\d{2,3})$")


def layer_key(index: int) -> str:
    return f"layer_{index:02d}"


def vision_key(index: int) -> str:
    return f"vision_{index:02d}"


def parse_key(key: str) -> tuple[str, int]:
    """Return (kind, index); kind is 'layer', 'vision' or 'projector' (index -1)."""
    if key == PROJECTOR:
        return PROJECTOR, -1
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"not a layer key: {key!r} (expected layer_NN, vision_NN or projector)")
    return match.group(1), int(match.group(2))


def sort_keys(keys: list[str]) -> list[str]:
    """Forward-path order: vision tower, then projector, then LLM/ViT blocks."""
    rank = {"vision": 0, PROJECTOR: 1, "layer": 2}
    return sorted(keys, key=lambda k: (rank[parse_key(k)[0]], parse_key(k)[1]))


def forward_position(key: str, vision_depth: int = 0) -> float:
    """Position on a shared x axis: vision layers first, projector, then LLM layers."""
    kind, index = parse_key(key)
    if kind == "vision":
        return index
    if kind == PROJECTOR:
        return vision_depth + 1
    return index + (vision_depth + 2 if vision_depth else 0)
