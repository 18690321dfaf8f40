"""Where each stage computes: a device and a thread count per stage, resolved from the config alone.

Three stages run a model or a probe: `extract` (config `extract.device`), `scan` (`scan.device`)
and `probe` (`probe.device`), each `auto | cpu | cuda`, each with its own `threads`. They are
resolved at DAG build from the config, never from the machine, so that the plan, the requests,
the fingerprints and the job agree on every node:

- `cpu` and `cuda` as given; `auto` is cuda unless every model is a tiny model (a `tiny` block:
  the demo, the tests), then cpu.
- A stage on cuda asks SLURM for one GPU (`resources.gpus`), on cpu for none; its job uses exactly
  that device and stops at once, naming the config key, on a node without CUDA.
- On the CPU the number of torch threads changes how float sums are split, and so the numbers
  (measured: a probe step with 1 and with 2 threads differs in the last bits). A CPU stage's
  threads are therefore in its fingerprint, and its job pins torch to them whatever the executor
  grants (a local `--cores 2` scales a rule's threads down; the numbers must not follow).
  On cuda the threads only feed the device (decoding, writing, loading): not in the fingerprint.

Torch-free: the DAG uses it.
"""

from __future__ import annotations

import math
from typing import Any

STAGES = ("extract", "scan", "probe")
# Threads when the config leaves them null. Beside a GPU: image decoding and the writer thread
# (extract), the data reads (scan), the loader's producer thread and the training loop (probe).
GPU_THREADS = {"extract": 4, "scan": 4, "probe": 2}
# A CPU forward of a real model scales with cores; 8 is a modest node share (not measured here).
CPU_FORWARD_THREADS = 8
# Tiny-only configs (the demo, the tests) on the CPU: one thread, so parallel jobs of a small
# machine never oversubscribe its cores.
TINY_THREADS = 1


class DeviceUnavailable(RuntimeError):
    """A stage resolved to cuda ran on a node without a usable CUDA device."""


def key(stage: str) -> str:
    """The config key of a stage's device: `extract.device`, `scan.device`, `probe.device`."""
    return f"{stage}.device"


def tiny_only(config: dict[str, Any]) -> bool:
    return all(model.get("tiny") is not None for model in config["models"].values())


def resolved(config: dict[str, Any], stage: str) -> str:
    """`cpu` or `cuda`: the device a stage's jobs use, from the config alone."""
    device = config[stage]["device"]
    if device == "auto":
        return "cpu" if tiny_only(config) else "cuda"
    return device


def threads(config: dict[str, Any], stage: str) -> int:
    """The CPUs a stage's job asks for and pins torch to: `{stage}.threads`, else a default by device."""
    given = config[stage].get("threads")
    if given is not None:
        return int(given)
    if resolved(config, stage) == "cuda":
        return GPU_THREADS[stage]
    if tiny_only(config):
        return TINY_THREADS
    return probe_cpu_threads() if stage == "probe" else CPU_FORWARD_THREADS


def probe_cpu_threads() -> int:
    """Cores that keep a CPU probe at the file system's assumed read speed, from the measured
    per-core probe step (`probing.throughput`)."""
    from .probing.throughput import ASSUMED_READ_GB_PER_S, PROBE_CPU_CORES_PER_GB_S

    return max(1, math.ceil(PROBE_CPU_CORES_PER_GB_S * ASSUMED_READ_GB_PER_S))


def fingerprint_inputs(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """What of a stage's placement shapes its numbers: the resolved device type, and on the CPU the threads."""
    device = resolved(config, stage)
    inputs: dict[str, Any] = {key(stage): device}
    if device == "cpu":
        inputs[f"{stage}.threads"] = threads(config, stage)
    return inputs


def use(config: dict[str, Any], stage: str) -> str:
    """In a job: check the stage's device is here, pin torch's threads; return the device ("cpu" or "cuda")."""
    import torch

    device = resolved(config, stage)
    require(device, key(stage), config[stage]["device"])
    torch.set_num_threads(threads(config, stage))
    return device


def require(device: str, config_key: str, configured: str | None = None) -> None:
    """Raise DeviceUnavailable naming `config_key` when `device` is cuda and this node has none."""
    import torch

    if device != "cuda" or torch.cuda.is_available():
        return
    how = f"{configured!r}" + (" (auto: the config has models that are not tiny)" if configured == "auto" else "")
    raise DeviceUnavailable(
        f"config key {config_key} = {how} resolves to cuda, but this node has no usable CUDA device "
        f"(torch.cuda.is_available() is False). Run this stage on a GPU partition (the profile's set-resources), "
        f"or set {config_key}: cpu.")
