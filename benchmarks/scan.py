"""Benchmark: the layer scan (both passes, every layer) vs one bare forward pass.

A tiny random ViT (open_clip, built like the demo's) on a synthetic ADE20K-layout dataset. The
bare forward runs the whole image tower over train+val with no hooks and no capture; the scan
runs `layerprobe.scan.run.run_scan` on every layer (fit pass over train but its held-out share, solve,
a pass scoring every lambda on the held-out share, a validation pass at each layer's chosen one).
Both read images from the same preprocessed Zarr store. Runs alternate (bare, scan) `--repeats`
times; PASS when min(scan) / min(bare) <= 1.3: the fastest run of each is the one least slowed
by other tenants of a shared machine (the median pair ratio and CPU-time ratio are printed too).

    .venv/bin/python benchmarks/scan.py [--training 800 --validation 80 --repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from layerprobe.data.preprocess import open_data, preprocess
from layerprobe.data.synthetic import write_dataset
from layerprobe.malloc import tune_malloc
from layerprobe.models.backbones import load_backbone
from layerprobe.models.tiny import openclip as tiny_clip
from layerprobe.scan.cost import stats_bytes
from layerprobe.scan.run import _batches, run_scan, score_pass

LAMBDAS = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # the config default grid
THRESHOLD = 1.3


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # ADE20K has 20,210 training and 2,000 validation images: the defaults keep its ~10:1 ratio.
    parser.add_argument("--training", type=int, default=800)
    parser.add_argument("--validation", type=int, default=80)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=12, help="synthetic classes (the generator has at most 12)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default malloc settings")
    return parser.parse_args()


def build(args: argparse.Namespace, work: Path):
    tiny = {"image_size": args.image_size, "patch_size": args.patch_size, "width": args.width,
            "layers": args.layers, "heads": 4, "mixing": 1.0, "seed": 0}
    weights = work / "bench_vit.pt"
    arch = "layerprobe-bench-vit"
    tiny_clip.build(arch, weights, tiny)
    backbone = load_backbone("bench_vit", {"kind": "open_clip", "arch": arch, "pretrained": str(weights),
                                           "tiny": tiny}, "cpu")
    root = write_dataset(work / "ADEChallengeData2016", training=args.training, validation=args.validation,
                         height=96, width=128, classes=args.classes)
    store = work / f"{args.image_size}px.zarr"
    preprocess(root, store, work / f"{args.image_size}px.json", args.image_size, {}, chunk_images=16)
    return backbone, open_data(store)


@torch.inference_mode()
def bare_forward(backbone, data, batch_size: int, splits=("training", "validation")) -> float:
    """Every block of the tower over the splits, reading the store like the scan does."""
    start = time.perf_counter()
    for split in splits:
        for images, _, _ in _batches(data, split, None, batch_size):
            backbone.visual(backbone.normalize(torch.from_numpy(np.ascontiguousarray(images))))
    return time.perf_counter() - start


def scoring_stress(backbone, data, batch_size: int) -> tuple[float, float]:
    """Seconds per validation image of the score pass with 150 distinct random classes per layer
    (near-random logits: many candidate classes per cell, the scorer's worst case), and of the
    bare forward over the same images."""
    g = torch.Generator().manual_seed(0)
    heads = {k: (torch.randn(len(LAMBDAS), d, 150, generator=g) / d ** 0.5, torch.zeros(len(LAMBDAS), 1, 150),
                 torch.arange(150)) for k, d in backbone.dims().items()}
    n = data["validation/images"].shape[0]
    t0 = time.perf_counter()
    score_pass(backbone, data, None, heads, None, batch_size, 150, torch.device("cpu"), "stress")
    scored = time.perf_counter() - t0
    return scored / n, bare_forward(backbone, data, batch_size, ("validation",)) / n


def tree_bytes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def written_chars() -> int:
    """Bytes this process passed to write() so far (files, pipes and terminals alike)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    args = parse()
    tuned = not args.no_tune_malloc and tune_malloc()  # as the rule script does; applies to both runs
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger = logging.getLogger("layerprobe")
    logger.addHandler(handler)  # not open_clip's chatter on the root logger
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        backbone, data = build(args, work)
        keys = sorted(backbone.dims())
        bare_forward(backbone, data, args.batch_size)  # warm-up: allocator, thread pool, page cache
        run_scan(backbone, data, {"training": range(64), "validation": range(16)}, keys, None, LAMBDAS, args.batch_size)
        before_files, before_chars = tree_bytes(work), written_chars()
        bares, scans, tables, cpu = [], [], [], []
        for _ in range(args.repeats):
            c0 = time.process_time()
            bares.append(bare_forward(backbone, data, args.batch_size))
            c1, t0 = time.process_time(), time.perf_counter()
            tables.append(run_scan(backbone, data, None, keys, None, LAMBDAS, args.batch_size))
            scans.append(time.perf_counter() - t0)
            cpu.append((time.process_time() - c1) / (c1 - c0))
        tables[-1].to_csv(work / "scan.csv", index=False)
        chars = written_chars() - before_chars
        new_files = {k: v for k, v in tree_bytes(work).items() if before_files.get(k) != v}
        stress = scoring_stress(backbone, data, args.batch_size)
        ratio = min(scans) / min(bares)
        report(args, backbone, tables, bares, scans, ratio, new_files, chars // args.repeats, stress, tuned,
               statistics.median(cpu))
        return 0 if ratio <= THRESHOLD else 1


def report(args, backbone, tables, bares, scans, ratio, new_files, chars, stress, tuned, cpu_ratio) -> None:
    phases = [t.attrs["seconds"] for t in tables]
    best = min(range(len(scans)), key=scans.__getitem__)
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"glibc malloc tuned: {tuned}")
    print(f"model: tiny ViT width {args.width}, {args.layers} blocks, {args.image_size}px / patch {args.patch_size} "
          f"({backbone.grid ** 2} tokens), {len(tables[0])} layers scanned, {len(LAMBDAS)} lambdas")
    print(f"data: {args.training} training + {args.validation} validation images, {args.classes} classes, "
          f"batch {args.batch_size}")
    print(f"bare forward train+val, s: {', '.join(f'{b:.2f}' for b in bares)}")
    print(f"scan (fit + solve + hold-out + score), s: {', '.join(f'{s:.2f}' for s in scans)}; fastest run: "
          f"fit {phases[best]['fit']:.2f} + solve {phases[best]['solve']:.2f} + hold-out "
          f"{phases[best]['holdout']:.2f} + score {phases[best]['score']:.2f}")
    print(f"ratio min(scan) / min(bare forward): {ratio:.3f}; median of the {len(scans)} pair ratios: "
          f"{statistics.median(s / b for s, b in zip(scans, bares)):.3f} "
          f"(pairs: {', '.join(f'{s / b:.3f}' for s, b in zip(scans, bares))})")
    print(f"CPU-time ratio (less sensitive to other tenants of the machine), median: {cpu_ratio:.3f}")
    print(f"{'PASS' if ratio <= THRESHOLD else 'FAIL'}: ratio {ratio:.3f} {'<=' if ratio <= THRESHOLD else '>'} "
          f"{THRESHOLD}")
    print(f"files written by a scan: {new_files} (write() calls per scan incl. progress lines: {chars} B)")
    print(f"scoring stress, 150 distinct random classes: score pass {stress[0] * 1e3:.1f} ms/image vs bare "
          f"forward {stress[1] * 1e3:.1f} ms/image")
    llm = stats_bytes([4096] * 33)
    full = stats_bytes([4096] * 33 + [4096] + [1024] * 25)
    print(f"ridge statistics, LLaVA-1.5-7B 33 LLM layers @4096: {llm / 2**30:.2f} GiB ({llm} B); "
          f"+ projector @4096 + 25 vision layers @1024: {full / 2**30:.2f} GiB ({full} B)")
    print(f"load average after the runs (other tenants): {Path('/proc/loadavg').read_text().split()[:3]}")
    print(tables[best].to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
