"""Benchmark: the probe's training step on CPU cores, at the real widths: features consumed per core.

What it measures: `layerprobe.probing.step.ProbeStep`, the very step ProbeTrainer runs per batch
(fp16 features converted to float32, BatchNorm, the 1x1 linear head to 150 classes, logits
upsampled bilinearly to the model's resolution, cross-entropy ignoring 255, backward, AdamW),
plus what the trainer does with its result (`loss.item()`, the running train meter), with the
malloc setting of the probe's rule script (`layerprobe.malloc.keep_freed_memory`). Shapes:

    ViT-B/16      196 tokens x 768,  labels 224 px
    ViT-L/14      256 tokens x 1024, labels 224 px
    ViT-L/14@336  576 tokens x 1024, labels 336 px
    LLaVA-7B      576 tokens x 4096, labels 336 px

Each shape runs in its own process (its peak RSS is its own), with torch pinned to 1, 2 and all
cores in turn; after warm-up steps (the heap grows to its steady size), `--steps` steps are
timed. Reported per row: seconds per step, images/s, GB/s of fp16 features consumed (batch x
tokens x width x 2 B per step) in total and per core, the cores that would consume 1 GB/s at
that per-core rate, and a plain matmul of the same shapes (the head's forward x W^T and its
weight gradient g^T x: 4 x batch x tokens x width x 150 FLOP) for comparison. Per shape: peak
RSS above the RSS before the first step, over one float32 logits tensor (batch x 150 x px^2 x
4 B), which is what a CPU probe's RAM request counts (`probing.throughput.STEP_LOGIT_TENSORS`).
`--plain` adds the step as it was before `probing/step.py` (F.interpolate + F.cross_entropy,
glibc's default malloc), at all cores.

    .venv/bin/python benchmarks/probe_step.py              # full: batch 64 (probe.batch_size's default)
    .venv/bin/python benchmarks/probe_step.py --quick      # batch 1, 1 and all cores, 2 steps: < 1 min
    .venv/bin/python benchmarks/probe_step.py --plain --profile   # + the step before probing/step.py, profiles

The full run needs ~16 GB of RAM for LLaVA-7B at batch 64 (three 4.3 GB logits tensors); lower
`--batch` on a smaller machine (the per-image figures hardly depend on it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

SHAPES = {"ViT-B/16": (196, 768, 224), "ViT-L/14": (256, 1024, 224), "ViT-L/14@336": (576, 1024, 336),
          "LLaVA-7B": (576, 4096, 336)}
CLASSES = 150
# ARITHMETIC, not measured: passes over the float32 logits per step (upsample write; contiguous
# copy read + write; log-softmax reads for max and sum, write; argmax read; NLL-backward fill;
# log-softmax backward two reads + write; upsample-backward read), for the GPU line below.
LOGIT_PASSES = 12
H100_HBM_GB_S = 3350.0  # H100 SXM's HBM3 bandwidth (NVIDIA's data sheet)


# --------------------------------------------------------------------------------------------
# One shape, in a child process
# --------------------------------------------------------------------------------------------

def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _matmul_seconds(feats, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x = feats.float().reshape(-1, feats.shape[-1])
    w, grad = torch.randn(CLASSES, x.shape[1]), torch.randn(x.shape[0], CLASSES)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        _ = x @ w.t()
        _ = grad.t() @ x
        best = min(best, time.perf_counter() - start)
    return best


def _plain_step(head, opt, feats, labels, size: int):
    """The step as ProbeTrainer ran it before probing/step.py (fresh tensors every step)."""
    import torch.nn.functional as F

    from layerprobe.probing.step import probe_inputs

    labels = labels.long()
    logits = head(probe_inputs(feats, None, False), size)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logits.detach().argmax(1), labels


def _profile(one) -> list[tuple[str, float]]:
    """Self CPU share of the heaviest ops of one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, e.self_cpu_time_total / total) for e in events[:8]]


def run_shape(name: str, batch: int, threads: list[int], warmup: int, steps: int, plain: bool,
              profile: bool = False) -> dict:
    import torch

    from layerprobe.malloc import keep_freed_memory
    from layerprobe.probing.metrics import SegmentationMeter
    from layerprobe.probing.step import LinearHead, ProbeStep

    if not plain:
        keep_freed_memory()  # as the probe's rule script does on the CPU
    tokens, width, size = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, tokens, width, generator=gen).half()
    labels = torch.randint(0, CLASSES, (batch, size, size), generator=gen, dtype=torch.uint8)
    labels[:, : size // 20] = 255  # some ignored pixels, as ADE20K's "other"
    torch.manual_seed(0)
    head = LinearHead(width, int(math.isqrt(tokens)))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    step = ProbeStep(head, opt, size, torch.device("cpu"), concat_cls=False)
    meter = SegmentationMeter()

    def one() -> None:
        loss, pred, long_labels = (_plain_step(head, opt, feats, labels, size) if plain
                                   else step(feats, None, labels))
        loss.item()
        meter.update(pred, long_labels)

    reset_peak_rss()
    before = rss_bytes()
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for _ in range(warmup):
            one()
        faults, start, cpu = _faults(), time.perf_counter(), time.process_time()
        for _ in range(steps):
            one()
        wall = (time.perf_counter() - start) / steps
        rows.append({"threads": n, "step_s": wall, "cpu_s": (time.process_time() - cpu) / steps,
                     "faults_per_step": (_faults() - faults) / steps, "matmul_s": _matmul_seconds(feats, n)})
    return {"shape": name, "batch": batch, "plain": plain, "rows": rows,
            "peak_above_mb": (peak_rss_bytes() - before) / 2**20, "profile": _profile(one) if profile else []}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

def derived(result: dict, row: dict) -> dict:
    tokens, width, size = SHAPES[result["shape"]]
    batch = result["batch"]
    gb = batch * tokens * width * 2 / 1e9
    per_core = gb / row["step_s"] / row["threads"]
    return {"images_s": batch / row["step_s"], "gb_s": gb / row["step_s"], "gb_s_core": per_core,
            "cores_1gb": 1 / per_core, "gflops": 4 * batch * tokens * width * CLASSES / row["matmul_s"] / 1e9,
            "vs_matmul": row["step_s"] / row["matmul_s"]}


def logits_mb(result: dict) -> float:
    _, _, size = SHAPES[result["shape"]]
    return result["batch"] * CLASSES * size * size * 4 / 2**20


def print_tables(results: list[dict]) -> float:
    """The markdown tables; returns the largest cores-for-1-GB/s at the most cores measured."""
    print("| shape | tokens x width | labels | batch | threads | s / step | images/s | feature GB/s | GB/s per core "
          "| cores for 1 GB/s | matmul GFLOP/s | step / matmul | minor faults / step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for result in (r for r in results if not r["plain"]):
        tokens, width, size = SHAPES[result["shape"]]
        for row in result["rows"]:
            d = derived(result, row)
            print(f"| {result['shape']} | {tokens} x {width} | {size} px | {result['batch']} | {row['threads']} "
                  f"| {row['step_s']:.3f} | {d['images_s']:.2f} | {d['gb_s']:.4f} | {d['gb_s_core']:.4f} "
                  f"| **{d['cores_1gb']:.1f}** | {d['gflops']:.1f} | {d['vs_matmul']:.0f}x "
                  f"| {row['faults_per_step']:.0f} |")
        worst = max(worst, derived(result, result["rows"][-1])["cores_1gb"])
    print("\n| shape | one logits tensor MiB | peak RSS above start MiB | peak / logits tensor |")
    print("|---|---|---|---|")
    for result in (r for r in results if not r["plain"]):
        print(f"| {result['shape']} | {logits_mb(result):.0f} | {result['peak_above_mb']:.0f} "
              f"| **{result['peak_above_mb'] / logits_mb(result):.2f}** |")
    plain = {r["shape"]: r for r in results if r["plain"]}
    if plain:
        print("\n| shape | threads | plain step s | step s | plain / step | plain faults / step "
              "| plain peak / logits tensor |")
        print("|---|---|---|---|---|---|---|")
        for result in (r for r in results if not r["plain"] and r["shape"] in plain):
            old, new = plain[result["shape"]]["rows"][-1], result["rows"][-1]
            print(f"| {result['shape']} | {new['threads']} | {old['step_s']:.3f} | {new['step_s']:.3f} "
                  f"| {old['step_s'] / new['step_s']:.2f} | {old['faults_per_step']:.0f} "
                  f"| {plain[result['shape']]['peak_above_mb'] / logits_mb(result):.2f} |")
    return worst


def print_arithmetic(results: list[dict]) -> None:
    print("\nArithmetic from these rows (not measured on such machines):")
    for result in (r for r in results if not r["plain"]):
        tokens, width, size = SHAPES[result["shape"]]
        d = derived(result, result["rows"][-1])
        image_gb = tokens * width * 2 / 1e9
        gpu_s = LOGIT_PASSES * CLASSES * size * size * 4 / (H100_HBM_GB_S * 1e9)
        print(f"- {result['shape']}: a 32-core node at the per-core rate of {result['rows'][-1]['threads']} "
              f"core(s) consumes {32 * d['gb_s_core']:.2f} GB/s (linear in cores); an H100 moving "
              f"{LOGIT_PASSES} passes of the logits per image at its {H100_HBM_GB_S:g} GB/s HBM bandwidth: "
              f"{image_gb / gpu_s:.1f} GB/s of features.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 1 and all cores, 1 warm-up + 2 steps")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 64; quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 5; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 3; quick: 1)")
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--plain", action="store_true", help="also time the pre-step.py formulation, all cores")
    parser.add_argument("--profile", action="store_true", help="profile one step per shape (torch.profiler)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_shape(**spec)))
        return
    cores = len(os.sched_getaffinity(0))
    batch = args.batch or (1 if args.quick else 64)
    steps, warmup = args.steps or (2 if args.quick else 5), args.warmup or (1 if args.quick else 3)
    threads = sorted({1, cores} if args.quick else {1, min(2, cores), cores})
    print(f"Machine: {machine()}; load average {load_average()}")
    print(f"batch {batch}, threads {threads}, {warmup} warm-up + {steps} timed steps per row\n")
    results = []
    for name in args.shapes:
        cases = [dict(name=name, batch=batch, threads=threads, warmup=warmup, steps=steps, plain=False,
                      profile=args.profile)]
        if args.plain:
            cases.append(dict(name=name, batch=batch, threads=[cores], warmup=warmup, steps=steps, plain=True,
                              profile=args.profile))
        for case in cases:
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True,
                                 text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    worst = print_tables(results)
    print(f"\nCores for 1 GB/s of features, largest over the shapes at {threads[-1]} core(s): {worst:.1f} "
          "(layerprobe.probing.throughput.PROBE_CPU_CORES_PER_GB_S)")
    print_arithmetic(results)
    for result in (r for r in results if r["profile"]):
        ops = ", ".join(f"{op} {share:.0%}" for op, share in result["profile"])
        print(f"\nWhere a step's time goes, {result['shape']}{' (plain)' if result['plain'] else ''}: {ops}")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
