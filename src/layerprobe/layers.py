"""Layer naming convention, fixed once for every model (see docs/DESIGN.md).

layer_00 is the input to the first block (embeddings); layer_i is the output of block i
(1-based). For LLaVA, ``layer_*`` are LLM decoder layers (pre final norm), ``vision_*`` are
vision-tower states with the same numbering, and ``projector`` is the projector output.

A probe is named by its layer key plus its CLS variant: ``layer_12`` reads patch tokens only,
``layer_12+cls`` concatenates the layer's CLS token to every patch. Both read the same array.
"""

from __future__ import annotations

import re

PROJECTOR = "projector"
CLS_SUFFIX = "+cls"
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


def probe_id(key: str, concat_cls: bool) -> str:
    """The probe's name (and output folder): the layer key, plus '+cls' for the CLS variant."""
    return key + (CLS_SUFFIX if concat_cls else "")


def parse_probe_id(name: str) -> tuple[str, bool]:
    """(layer key, concat_cls) of a probe name."""
    cls = name.endswith(CLS_SUFFIX)
    key = name[:-len(CLS_SUFFIX)] if cls else name
    parse_key(key)  # raises on a malformed name
    return key, cls
