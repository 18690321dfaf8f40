"""One shared layer axis for every per-layer figure.

A multimodal LLM's forward path (kinds llava, mllm) runs vision tower -> projector or connector
(a merger, pixel shuffle or pooling before the projection) -> LLM, so its keys sit at
`layers.forward_position` (vision blocks, then the connector, then the LLM layers). Towers of
different depths share the vision segment at relative depth: block i of a D-block tower is drawn
at i / D of it (the deepest tower's blocks at their index). CLIP models are vision towers alone,
drawn the same way, so CLIP ViT-L/14@336 lines up with LLaVA's own tower; without an LLM the x
axis is simply the block index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import config as lp_config
from ..models.layers import PROJECTOR, forward_position, parse_key
from ..models.specs import LLM_KINDS, requested_keys

SEGMENT_LABELS = {"vision": "vision tower", PROJECTOR: "projector", "llm": "LLM layers", "vit": "ViT blocks"}
CONNECTOR = "connector"  # the segment's name when an mllm (merger, pixel shuffle, pooling) is drawn

@dataclass
class LayerAxis:
    vision_depth: int  # width of the vision segment; 0 = no segments (plain block index)
    kinds: dict[str, str]  # model -> open_clip | hf_vision | llava | mllm
    depths: dict[str, int]  # image-encoder model (CLIP, DINOv2, ...) -> number of blocks
    llm_depth: int = 0  # deepest LLM layer (sizes the gap around the projector)
    vision_depths: dict[str, int] | None = None  # LLM-kind model -> blocks of its own vision tower
    connector: str = SEGMENT_LABELS[PROJECTOR]  # the middle segment's name

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LayerAxis":
        specs = {name: lp_config.spec(config, name) for name in config["models"]}
        llms = {n: s for n, s in specs.items() if s.kind in LLM_KINDS}
        pre_llm = any(k.startswith("vision_") or k == PROJECTOR
                      for name, m in config["models"].items() if name in llms for k in requested_keys(m))
        clip = len(llms) < len(specs)
        # Segments only when something lives before the LLM; else LLM layers start at 0.
        depth = max((s.vision_depth for s in llms.values()), default=0) if llms and (pre_llm or clip) else 0
        return cls(depth, {n: s.kind for n, s in specs.items()},
                   {n: s.depth for n, s in specs.items() if n not in llms},
                   max((s.depth for s in llms.values()), default=0), {n: s.vision_depth for n, s in llms.items()},
                   _connector(specs.values()))

    @classmethod
    def single(cls, config: dict[str, Any], model: str, keys: list[str]) -> "LayerAxis":
        """The axis of one model's own panel: CLIP by block index, LLaVA segmented when `keys`
        reach before the LLM."""
        spec = lp_config.spec(config, model)
        llm = spec.kind in LLM_KINDS
        pre_llm = any(k.startswith("vision_") or k == PROJECTOR for k in keys)
        depth = spec.vision_depth if llm and pre_llm else 0
        return cls(depth, {model: spec.kind}, {} if llm else {model: spec.depth}, spec.depth if llm else 0,
                   {model: spec.vision_depth} if llm else {}, _connector([spec]))

    def encoder_only(self, model: str) -> bool:
        """An image encoder alone (open_clip, hf_vision): drawn at relative depth beside an LLM."""
        return model in self.kinds and self.kinds[model] not in LLM_KINDS

    @property
    def segmented(self) -> bool:
        return self.vision_depth > 0

    @property
    def gap(self) -> float:
        """Room on each side of the projector: ~1/12 of the axis, so "proj" gets its own tick
        between 24 vision blocks and 32 LLM layers (forward_position's gap of 1 is too narrow)."""
        return float(max(1, round((self.vision_depth + self.llm_depth) / 12)))

    def position(self, model: str, key: str) -> float:
        kind, index = parse_key(key)
        if self.encoder_only(model):
            if self.segmented:
                return index * self.vision_depth / max(self.depths[model], 1)
            return float(index)
        if not self.segmented:
            return float(forward_position(key, 0))
        if kind == "vision":
            own = (self.vision_depths or {}).get(model) or self.vision_depth
            return index * self.vision_depth / own
        if kind == PROJECTOR:
            return self.vision_depth + self.gap
        return self.vision_depth + 2 * self.gap + index

    def segment(self, model: str, key: str) -> str:
        kind, _ = parse_key(key)
        if self.encoder_only(model):
            return "vision" if self.segmented else "vit"
        if kind == "layer":
            return "llm"
        return kind

    def tick_label(self, model: str, key: str) -> str:
        kind, index = parse_key(key)
        if kind == PROJECTOR:
            return "proj"
        if kind == "vision" or (self.segmented and self.encoder_only(model)):
            return f"v{index}"
        return str(index)

    def boundaries(self) -> list[float]:
        """x of the vision|projector and projector|LLM borders (empty without segments)."""
        if not self.segmented:
            return []
        v, g = self.vision_depth, self.gap
        return [v + g / 2, v + 1.5 * g]

    def segment_spans(self, x_max: float) -> list[tuple[str, float, float]]:
        """(label, start, end) of each segment for labelling the top of a plot."""
        if not self.segmented:
            return []
        left, right = self.boundaries()
        return [(SEGMENT_LABELS["vision"], -0.5, left), (self.connector, left, right),
                (SEGMENT_LABELS["llm"], right, max(x_max + 0.5, right + 1))]

    def ticks(self, rows: list[tuple[str, str]], max_ticks: int = 28) -> tuple[list[float], list[str]]:
        """Tick positions/labels for the (model, key) pairs drawn.

        Segmented: the vision tower on a regular grid of tower blocks (CLIP lines sit at relative
        depth between them), "proj", then the LLM layers drawn (thinned to about 14). Plain: the
        blocks drawn, thinned to `max_ticks`.
        """
        if not self.segmented:
            xs = sorted({self.position(m, k) for m, k in rows})
            keep = _thin(xs, max_ticks)
            return keep, [str(int(x)) if float(x).is_integer() else f"{x:g}" for x in keep]
        step = next(s for s in (1, 2, 4, 6, 8, 12, 16, 32) if self.vision_depth / s <= 7)
        ticks = [(float(i), f"v{i}") for i in range(0, self.vision_depth + 1, step)]
        if any(k == PROJECTOR or self.kinds.get(m) in LLM_KINDS for m, k in rows):
            ticks.append((self.vision_depth + self.gap, "proj"))
        llm = sorted({self.position(m, k): k for m, k in rows
                      if self.kinds.get(m) in LLM_KINDS and parse_key(k)[0] == "layer"}.items())
        width = self.vision_depth + 2 * self.gap + self.llm_depth
        kept = _spaced(_thin([x for x, _ in llm], 14), width / 45)
        ticks += [(x, str(parse_key(k)[1])) for x, k in llm if x in kept]
        return [t[0] for t in ticks], [t[1] for t in ticks]


def _connector(specs: Any) -> str:
    """"connector" when a kind-mllm model is drawn (its middle stage may merge or pool tokens)."""
    return CONNECTOR if any(s.kind == "mllm" for s in specs) else SEGMENT_LABELS[PROJECTOR]


def _thin(xs: list[float], max_ticks: int) -> list[float]:
    """At most about `max_ticks` evenly spaced entries, always the first and the last."""
    if len(xs) <= max_ticks:
        return xs
    step = -(-len(xs) // max_ticks)
    return sorted(set(xs[::step]) | {xs[0], xs[-1]})


def _spaced(xs: list[float], min_gap: float) -> list[float]:
    """Drop ticks closer than `min_gap` to the previous one (labels would overlap); the last stays."""
    kept: list[float] = []
    for x in xs:
        if kept and x - kept[-1] < min_gap:
            if x != xs[-1]:
                continue
            kept.pop()
        kept.append(x)
    return kept
