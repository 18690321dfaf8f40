"""Helpers shared by the benchmark scripts: machine description, peak RSS, timing, verdicts.

Peak RSS is the kernel's high-water mark of this process (`VmHWM` in /proc/self/status). It only
grows, so `reset_peak_rss()` writes "5" to /proc/self/clear_refs (Linux >= 4.0) to restart it at
the current RSS before each measured run; where that is refused, the peak is the process's peak so
far (`PeakRss.reset_ok` says which).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1 << 20


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """High-water mark of the resident set (VmHWM), else getrusage's ru_maxrss (KiB on Linux)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return (kb or 0) * 1024


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS; False when the kernel refuses (then peaks accumulate)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    """One line: CPUs usable by this process, CPU model, RAM, Python/torch, torch threads."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{usable} CPUs (nproc; {os.cpu_count()} online)", cpu_model(), f"{ram_bytes() / 2**30:.1f} GiB RAM",
             f"Python {platform.python_version()}"]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    return ", ".join(parts)


def quiet_logging(level: int = logging.WARNING) -> None:
    """Only warnings from layerprobe, on stdout; silence open_clip's chatter on the root logger."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger = logging.getLogger("layerprobe")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logging.getLogger().setLevel(logging.ERROR)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Runs:
    """Wall seconds, CPU seconds (all threads of the process) and peak RSS of repeated runs."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.wall)

    @property
    def median_cpu(self) -> float:
        return median(self.cpu)

    @property
    def max_peak(self) -> int:
        return max(self.peak)

    def add(self, wall: float, cpu: float, peak: int, result: Any) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.peak.append(peak)
        self.results.append(result)


def measure(fn: Callable[[], Any], runs: Runs, setup: Callable[[], Any] | None = None) -> Any:
    """One timed run of fn (setup, if any, untimed and before the peak-RSS reset)."""
    if setup is not None:
        setup()
    reset_peak_rss()
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    runs.add(wall, cpu, peak_rss_bytes(), result)
    return result


def interleave(cases: dict[str, Callable[[], Any]], repeats: int,
               setups: dict[str, Callable[[], Any]] | None = None, out: dict[str, Runs] | None = None,
               rotate: int = 0) -> dict[str, Runs]:
    """Run the cases in turn (A, B, C, A, B, C, ...) `repeats` times, so that slow stretches of a
    shared machine hit every case alike; ratios are then taken between medians. The starting case
    moves by one each round (and by `rotate` overall), so no case always follows the same one."""
    setups = setups or {}
    out = out if out is not None else {}
    for name in cases:
        out.setdefault(name, Runs())
    names = list(cases)
    for r in range(repeats):
        shift = (r + rotate) % len(names)
        for name in names[shift:] + names[:shift]:
            measure(cases[name], out[name], setups.get(name))
    return out


def pair_ratios(num: Runs, den: Runs) -> list[float]:
    """num.wall[i] / den.wall[i] for runs made side by side (same round of `interleave`)."""
    return [a / b for a, b in zip(num.wall, den.wall)]


def verdict(ok: bool, what: str) -> str:
    line = f"{'PASS' if ok else 'FAIL'}: {what}"
    print(line, flush=True)
    return line


def fmt_list(values: Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"
