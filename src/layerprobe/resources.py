"""Requested resources per rule: the single source for the rules, the profile and the report.

RAM is kept small on purpose (the cluster bills requested RAM heavily): the probe asks for its
loader budget plus a fixed overhead, never for the size of the layer. Runtime grows with the
retry attempt, so a job killed by the time limit comes back with more time and resumes.
"""

from __future__ import annotations

from typing import Any

from .specs import model_spec

# Measured peaks of the demo jobs (results/benchmarks) plus headroom; see docs/BENCHMARKS.md.
BASE_MEM_MB = {"synthetic_dataset": 1024, "preprocess": 2048, "build_tiny_model": 2048,
               "prepare_store": 1024, "finalize_store": 1024, "report": 2048}
# prepare_store may delete a discarded store of terabytes: an hour on a slow parallel file system.
BASE_RUNTIME_MIN = {"synthetic_dataset": 10, "preprocess": 60, "build_tiny_model": 10, "prepare_store": 60,
                    "finalize_store": 30, "report": 30, "extract": 240, "probe": 120, "scan": 360}
OVERHEAD_MB = 1024  # python + torch + CUDA context beside the loader buffers


def _model(config: dict[str, Any], wildcards: Any) -> tuple[str, dict[str, Any]] | None:
    name = getattr(wildcards, "model", None) if wildcards is not None else None
    return (name, config["models"][name]) if name in config.get("models", {}) else None


def mem_mb(rule: str, config: dict[str, Any], wildcards: Any = None, attempt: int = 1) -> int:
    if rule == "probe":
        return int(config["probe"]["ram_budget_mb"]) + OVERHEAD_MB
    if rule in ("extract", "scan"):
        found = _model(config, wildcards)
        big = found is not None and found[1].get("tiny") is None and found[1]["kind"] == "llava"
        # LLaVA-7B: fp16 weights load straight to the GPU; host RAM stages batches and chunks.
        return 8192 if big else 4096
    return BASE_MEM_MB.get(rule, 2048)


def runtime_min(rule: str, config: dict[str, Any], wildcards: Any = None, attempt: int = 1) -> int:
    return BASE_RUNTIME_MIN.get(rule, 60) * attempt


def gpus(rule: str, config: dict[str, Any]) -> int:
    """GPU jobs only when the config can use one (demo/CPU configs request none)."""
    if rule not in ("extract", "probe", "scan"):
        return 0
    tiny_only = all(m.get("tiny") is not None for m in config["models"].values())
    return 0 if tiny_only or config["probe"]["device"] == "cpu" else 1


def image_count(config: dict[str, Any], split_sizes: dict[str, int]) -> int:
    cap = config["dataset"]["max_images"]
    return sum(min(n, cap.get(s) or n) for s, n in split_sizes.items())


def model_image_size(name: str, config: dict[str, Any]) -> int:
    return model_spec(name, config["models"][name]).image_size
