"""Layer naming convention, fixed once for every model (see docs/DESIGN.md).

layer_00 is the input to the first block (embeddings); layer_i is the output of block i
(1-based). For LLaVA, ``layer_*`` are LLM decoder layers (pre final norm), ``vision_*`` are
vision-tower states with the same numbering, and ``projector`` is the projector output.

A probe is named by its layer key plus its CLS variant: ``layer_12`` reads patch tokens only,
``layer_12+cls`` concatenates the layer's CLS token to every patch. Both read the same array.
With several ``probe.seeds``, the first seed's probe keeps the plain name and every further seed
s is a probe of its own, ``layer_12-seed1``, ``layer_12+cls-seed1``.
"""

from __future__ import annotations

import re

PROJECTOR = "projector"
CLS_SUFFIX = "+cls"
SEED_SUFFIX = "-seed"
# One definition of the names, for the parsers here and Snakemake's wildcard constraints.
LAYER_KEY_PATTERN = r"(layer|vision)_([0-9]{2,3})"
PROBE_ID_PATTERN = rf"({LAYER_KEY_PATTERN}|{PROJECTOR})([+]cls)?(-seed[0-9]+)?"
_KEY = re.compile(f"^{LAYER_KEY_PATTERN}$")
_SEED = re.compile(r"-seed(\d+)$")


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


def probe_id(key: str, concat_cls: bool, extra_seed: int | None = None) -> str:
    """The probe's name (and output folder): the layer key, plus '+cls' for the CLS variant, plus
    '-seedN' for a probe of a seed other than the first of `probe.seeds`."""
    return key + (CLS_SUFFIX if concat_cls else "") + ("" if extra_seed is None else f"{SEED_SUFFIX}{extra_seed}")


def split_seed(name: str) -> tuple[str, int | None]:
    """(probe name without its seed suffix, the suffix's seed or None for the first seed)."""
    match = _SEED.search(name)
    return (name[:match.start()], int(match.group(1))) if match else (name, None)


def probe_seed(name: str, seeds: list[int]) -> int:
    """The seed a probe trains with: its suffix's, else the first of `probe.seeds`."""
    return split_seed(name)[1] if split_seed(name)[1] is not None else seeds[0]


def parse_probe_id(name: str) -> tuple[str, bool]:
    """(layer key, concat_cls) of a probe name (a seed suffix is ignored)."""
    name = split_seed(name)[0]
    cls = name.endswith(CLS_SUFFIX)
    key = name[:-len(CLS_SUFFIX)] if cls else name
    parse_key(key)  # raises on a malformed name
    return key, cls
