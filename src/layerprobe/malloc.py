"""glibc malloc tuning for the jobs whose every batch allocates and frees large tensors.

Process-wide, so it is called from entry points (the rule scripts, the benchmarks), never from
library code. It changes where memory comes from, never a number.
"""

from __future__ import annotations

import ctypes

# <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS at once.

    Why: every batch allocates and frees MB-sized tensors per layer (captured activations,
    logits, prediction maps). With glibc's defaults they go back to the OS and come back as
    fresh pages, and the page faults cost more than the arithmetic: measured ~600k faults and
    +25% wall time on the fit pass of the tiny benchmark ViT, none with these settings. The
    price is up to `trim_threshold` of freed memory kept by the process.
    Returns False where mallopt is unavailable (not glibc).
    """
    return _mallopt((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold))


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never give freed memory back to the OS.

    Why: a CPU probe step allocates tensors of batch x classes x label size^2 floats (1.9 GB
    per tensor at ViT-B/16's 224 px and batch 64, 4.3 GB at LLaVA's 336 px), far above glibc's
    largest mmap threshold (32 MiB): each came from a fresh mmap and was unmapped when freed,
    so every step first-touched gigabytes of new pages (~295k minor faults per step at 224 px
    and batch 8, half its CPU time; benchmarks/probe_step.py). From the heap, the next step
    reuses the same pages. The process keeps its peak: the job's request covers that peak anyway.
    """
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
