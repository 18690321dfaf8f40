"""Model facts known without loading weights (needed at DAG-build time and for the plan).

No table of models: each family reads its own library's configuration.
- open_clip: the architecture's model config (open_clip's bundled JSON, or the config a tiny
  model registers), see `specs.openclip`.
- llava: a LLaVA-1.5-style `LlavaConfig` (the hub id's config.json), see `specs.llava`.
- hf_vision: a Hugging Face vision encoder's config.json and preprocessor_config.json, see
  `specs.hf_vision`.
- mllm: an image-text-to-text checkpoint's config.json and image-processor config, one table per
  model_type (PaliGemma, Gemma 3, Qwen2-VL, Qwen2.5-VL, InternVL, Idefics3, SmolVLM, LLaVA-NeXT,
  LLaVA-OneVision), see `specs.mllm` and `specs.mllm_families`.
A hub id's JSON files come from a local directory, the weights cache, or the pinned copies shipped
with the package (`specs.hub`). Specs read through transformers are remembered across processes
(`specs.memo`): importing its config classes costs seconds per Snakemake job.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .core import LLM_KINDS, ModelSpec, UnknownModel, requested_keys
from .memo import remembered

__all__ = ["LLM_KINDS", "ModelSpec", "UnknownModel", "model_spec", "requested_keys", "approx_params"]

KINDS = ("open_clip", "llava", "hf_vision", "mllm")


def model_spec(name: str, model: dict[str, Any], cache_dir: str | None = None) -> ModelSpec:
    """The spec of config entry `models.<name>`; `cache_dir` is `weights.cache_dir`, where a hub
    id's config.json is found once fetched (UnknownModel when it cannot be found or read)."""
    return _cached_spec(name, json.dumps(model, sort_keys=True, default=str), cache_dir)


@lru_cache(maxsize=256)
def _cached_spec(name: str, model_json: str, cache_dir: str | None) -> ModelSpec:
    model = json.loads(model_json)
    kind = model["kind"]
    if kind == "open_clip":
        from .openclip import open_clip_spec

        return open_clip_spec(name, model)
    if kind == "llava":
        from .llava import llava_spec

        return remembered(lambda: llava_spec(name, model, cache_dir), kind, model_json, cache_dir)
    if kind == "hf_vision":
        from .hf_vision import hf_vision_spec

        return remembered(lambda: hf_vision_spec(name, model, cache_dir), kind, model_json, cache_dir)
    if kind == "mllm":
        from .mllm import mllm_spec

        return remembered(lambda: mllm_spec(name, model, cache_dir), kind, model_json, cache_dir)
    raise UnknownModel(f"models.{name}.kind: unknown kind {kind!r}; one of {list(KINDS)}")


def approx_params(name: str, model: dict[str, Any], cache_dir: str | None = None) -> float:
    """Parameters of the model a job loads (text tower included for open_clip)."""
    return model_spec(name, model, cache_dir).params
