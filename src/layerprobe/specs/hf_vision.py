"""Hugging Face vision encoders (placeholder)."""

from __future__ import annotations

from typing import Any

from .core import ModelSpec, UnknownModel


def hf_vision_spec(name: str, model: dict[str, Any], cache_dir: str | None) -> ModelSpec:
    raise UnknownModel(f"models.{name}.kind: hf_vision is not implemented yet")
