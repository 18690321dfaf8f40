"""Requested resources per rule: the single source for the rules, the profile, the plan and the report.

CPUs (`threads`), GPUs, RAM and runtime; the partition is the profile's (per-rule `set-resources`).

RAM is kept small on purpose (the cluster bills requested RAM heavily): the probe asks for its
loader budget plus a fixed overhead, never for the size of the layer. Runtime grows with the
retry attempt, so a job killed by the time limit comes back with more time and resumes.
"""

from __future__ import annotations

from typing import Any

from . import config as lp_config
from . import devices

# Measured peaks of the demo jobs (results/benchmarks) plus headroom; see docs/BENCHMARKS.md.
BASE_MEM_MB = {"synthetic_dataset": 1024, "preprocess": 2048, "build_tiny_model": 2048,
               "prepare_store": 1024, "finalize_store": 1024, "report": 2048}
# prepare_store may delete a discarded store of terabytes: an hour on a slow parallel file system.
BASE_RUNTIME_MIN = {"synthetic_dataset": 10, "preprocess": 60, "build_tiny_model": 10, "prepare_store": 60,
                    "finalize_store": 30, "report": 30, "extract": 240, "probe": 120, "scan": 360}
# Measured on the real-size smoke run (docs/BENCHMARKS.md, "Real-size smoke run"): a probe of a
# 4096-wide LLaVA layer peaked 1,044 MB above its 256 MB loader budget, so 1 GB was too little.
OVERHEAD_MB = 1536  # python + torch + CUDA context beside the loader buffers
# A model job on the CPU holds its fp32 weights: the smoke LLaVA (990 M parameters, 3.96 GB in
# fp32, read from fp16 safetensors) peaked at 5.2-6.3 GB in extraction and 3.5-4.1 GB while being
# built; CLIP L/14 and L/14-336 (428 M) at 2.3-2.4 GB; tiny models under 0.9 GB. Base + 1.75 x
# the fp32 weights leaves at least a quarter of each request free.
CPU_MODEL_BASE_MB = 2048
CPU_WEIGHT_FACTOR = 1.75
# On a GPU the weights load to the device; host RAM stages batches and chunks (not measured here).
# mllm as llava: a processor, tokenizer and batch staging of a 7-9 B multimodal LLM (not measured here).
GPU_HOST_MB = {"llava": 8192, "open_clip": 4096, "hf_vision": 4096, "mllm": 8192}


def mem_mb(rule: str, config: dict[str, Any], model: str | None = None, attempt: int = 1) -> int:
    """RAM (MiB) one job of `rule` asks for; `model` names the config entry for the model jobs."""
    if rule == "probe":
        base = int(config["probe"]["ram_budget_mb"]) + OVERHEAD_MB
        return base + (probe_step_mb(config, model) if gpus("probe", config) == 0 and model is not None else 0)
    base = _model_job_mb(rule, config, model)
    if rule == "scan" and model in config["models"]:  # the ridge statistics, when they live in host RAM
        from .scan.cost import host_stats_mb

        base += host_stats_mb(config, model, gpus("scan", config) > 0)
    return base


def probe_step_mb(config: dict[str, Any], model: str) -> int:
    """A CPU probe step's tensors beyond the loader: about STEP_LOGIT_TENSORS float32 tensors of
    batch x classes x label size^2 (`probing.throughput`); on a GPU they live in device memory.
    `model` may carry the `+cls` suffix of the plan's rows."""
    from .data.ade20k import NUM_CLASSES
    from .probing.throughput import STEP_LOGIT_TENSORS

    size = lp_config.spec(config, model.split("+")[0]).image_size
    tensor = config["probe"]["batch_size"] * NUM_CLASSES * size * size * 4
    return _round_up(STEP_LOGIT_TENSORS * tensor / 2**20)


def _model_job_mb(rule: str, config: dict[str, Any], name: str | None) -> int:
    model = config["models"].get(name) if name is not None else None
    if rule in ("extract", "scan", "build_tiny_model") and model is not None:
        if rule != "build_tiny_model" and gpus(rule, config) > 0 and model.get("tiny") is None:
            return GPU_HOST_MB[model["kind"]]
        weights = lp_config.spec(config, name).params * 4 / 2**20  # fp32 on the CPU (dtype auto)
        return max(BASE_MEM_MB.get(rule, 0), _round_up(CPU_MODEL_BASE_MB + CPU_WEIGHT_FACTOR * weights))
    if rule in ("extract", "scan"):
        return GPU_HOST_MB["open_clip"]
    return BASE_MEM_MB.get(rule, 2048)


def _round_up(mb: float, step: int = 256) -> int:
    return int(-(-mb // step) * step)


def runtime_min(rule: str, config: dict[str, Any], attempt: int = 1) -> int:
    """The time limit (minutes) of attempt `attempt`: longer on each retry, so a job killed by
    its limit comes back with more time and resumes."""
    return BASE_RUNTIME_MIN.get(rule, 60) * attempt


def gpus(rule: str, config: dict[str, Any]) -> int:
    """One GPU for a job of a stage resolved to cuda (`extract.device`, `scan.device`,
    `probe.device`; `layerprobe.devices`), none otherwise: a GPU only where it computes."""
    return 1 if rule in devices.STAGES and devices.resolved(config, rule) == "cuda" else 0


def threads(rule: str, config: dict[str, Any]) -> int:
    """CPUs one job asks for (the rule's `threads:`, SLURM's --cpus-per-task): the stage's
    `threads` for extract, scan and probe (`layerprobe.devices`), 1 for the small rules."""
    return devices.threads(config, rule) if rule in devices.STAGES else 1


def image_count(config: dict[str, Any], split_sizes: dict[str, int]) -> int:
    cap = config["dataset"]["max_images"]
    return sum(min(n, cap.get(s) or n) for s, n in split_sizes.items())


def model_image_size(name: str, config: dict[str, Any]) -> int:
    return lp_config.spec(config, name).image_size
