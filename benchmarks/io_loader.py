"""IO benchmark: shuffled probe epochs vs the raw read floor vs the hand-made .pt shards.

    .venv/bin/python benchmarks/io_loader.py            # ~1.2 GB store, 256 MB budget
    .venv/bin/python benchmarks/io_loader.py --quick    # smaller, for a smoke run

Every measure runs in its own subprocess so its peak RSS (VmHWM) is its own. Ratios are taken
within one run. With --cold (needs write access to /proc/sys/vm/drop_caches) the page cache is
dropped before each measure, so the floor is the disk, not memcpy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C  # benchmarks/ is the script's directory, so first on sys.path

ROOT = Path(__file__).resolve().parents[1]


# --- the synthetic store -------------------------------------------------------------------------
def build_store(path: Path, images: int, tokens: int, dim: int, chunk: int, side: int) -> None:
    import zarr

    group = zarr.open_group(path, mode="w")
    feats = group.require_array("training/layer_01", shape=(images, tokens, dim), dtype="float16",
                                chunks=(chunk, tokens, dim), compressors=None, fill_value=0)
    labels = group.require_array("training/labels", shape=(images, side, side), dtype="uint8",
                                 chunks=(chunk, side, side), compressors=None, fill_value=255)
    rng = np.random.default_rng(0)
    for start in range(0, images, chunk):
        stop = min(start + chunk, images)
        feats[start:stop] = rng.standard_normal((stop - start, tokens, dim), dtype=np.float32).astype(np.float16)
        labels[start:stop] = rng.integers(0, 150, (stop - start, side, side), dtype=np.uint8)


def build_shards(store: Path, out: Path, shards: int) -> None:
    """The user's layout: the same features as a few large torch .pt files."""
    import torch
    import zarr

    feats = zarr.open_group(store, mode="r")["training/layer_01"]
    bounds = np.linspace(0, feats.shape[0], shards + 1).astype(int)
    for i in range(shards):
        torch.save(torch.from_numpy(feats[bounds[i]:bounds[i + 1]]), out / f"shard_{i:03d}.pt")
    (out / "bounds.json").write_text(json.dumps(bounds.tolist()))


# --- measures (each in its own process) -----------------------------------------------------------
def measure_floor(store: Path) -> dict:
    """Every chunk file once, sequentially, as raw bytes into one reused buffer."""
    files = sorted(p for p in (store / "training").rglob("c/*/*") if p.is_file())
    files += sorted(p for p in (store / "training").rglob("c/*/*/*") if p.is_file())
    buf = bytearray(max(f.stat().st_size for f in files))
    view = memoryview(buf)
    start, total = time.perf_counter(), 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            total += fh.readinto(view)
    return {"seconds": time.perf_counter() - start, "bytes": total}


def _loader(store: Path, budget_mb: int, batch: int, threads: int | None = None):
    import zarr

    from layerprobe.loader import ChunkShuffleLoader

    g = zarr.open_group(store, mode="r")["training"]
    return ChunkShuffleLoader(g["layer_01"], g["labels"], batch_size=batch, ram_budget_bytes=budget_mb * 2**20,
                              seed=0, shuffle=True, mode="chunks", read_threads=threads)


def measure_loader(store: Path, budget_mb: int, batch: int, threads: int | None = None) -> dict:
    loader = _loader(store, budget_mb, batch, threads)
    start, batches, chunks_per_batch = time.perf_counter(), 0, []
    for feats, _, labels, rows in loader.iterate():
        batches += 1
        chunks_per_batch.append(len(set((rows // loader.chunk_rows).tolist())))
    return {"seconds": time.perf_counter() - start, "batches": batches, "window_chunks": loader.window_chunks,
            "mean_chunks_per_batch": float(np.mean(chunks_per_batch))}


def _probe_step(dim: int, grid: int, side: int):
    import torch
    import torch.nn.functional as F

    from layerprobe.probe import LinearHead

    torch.manual_seed(0)
    head = LinearHead(dim, grid)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def step(feats, labels) -> None:
        logits = head(feats.float(), side)
        loss = F.cross_entropy(logits, labels.long(), ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def measure_loader_probe(store: Path, budget_mb: int, batch: int, grid: int, side: int) -> dict:
    loader = _loader(store, budget_mb, batch)
    step = _probe_step(loader.arr.shape[2], grid, side)
    start = time.perf_counter()
    for feats, _, labels, _ in loader.iterate():
        step(feats, labels)
    loaded = time.perf_counter() - start
    # The same steps on one in-memory batch: the compute-only time of the epoch.
    feats, _, labels, _ = next(iter(loader.iterate()))
    start = time.perf_counter()
    for _ in range(len(loader)):
        step(feats, labels)
    return {"seconds": loaded, "compute_only_seconds": time.perf_counter() - start, "batches": len(loader)}


def measure_shards(shards: Path, batch: int, batches: int) -> dict:
    """Per-sample shuffled access, loading the owning shard for each sample (the hand-made way)."""
    import torch

    bounds = np.array(json.loads((shards / "bounds.json").read_text()))
    order = np.random.default_rng(0).permutation(bounds[-1])
    start = time.perf_counter()
    for b in range(batches):
        samples = []
        for i in order[b * batch:(b + 1) * batch]:
            shard = int(np.searchsorted(bounds, i, side="right") - 1)
            data = torch.load(shards / f"shard_{shard:03d}.pt", weights_only=True)
            samples.append(data[i - bounds[shard]].clone())
            del data
        torch.stack(samples)
    return {"seconds": time.perf_counter() - start, "batches": batches}


MEASURES = {"floor": measure_floor, "loader": measure_loader, "loader_probe": measure_loader_probe,
            "shards": measure_shards}


def run_child(name: str, cold: bool, **kwargs) -> dict:
    if cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    cmd = [sys.executable, __file__, "--child", name, json.dumps({k: str(v) if isinstance(v, Path) else v
                                                                    for k, v in kwargs.items()})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(name: str, raw: str) -> None:
    kwargs = json.loads(raw)
    for key in ("store", "shards"):
        if key in kwargs:
            kwargs[key] = Path(kwargs[key])
    result = MEASURES[name](**kwargs)
    result["peak_rss_mb"] = C.peak_rss_bytes() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    images, tokens, dim, chunk, side, grid = (256, 576, 512, 16, 96, 24) if args.quick else (1024, 576, 1024, 16, 96, 24)
    budget_mb, batch, shards = (64, 16, 4) if args.quick else (256, 16, 8)
    with tempfile.TemporaryDirectory(dir=ROOT / "results" if (ROOT / "results").is_dir() else None) as tmp:
        store, shard_dir = Path(tmp) / "store.zarr", Path(tmp) / "shards"
        shard_dir.mkdir()
        build_store(store, images, tokens, dim, chunk, side)
        build_shards(store, shard_dir, shards)
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        print(f"machine: {C.machine()}; cache: {'cold (dropped before each measure)' if args.cold else 'warm'}")
        print(f"store: {images} images x {tokens} tokens x {dim} dim fp16 + {side}x{side} labels = {size / 2**30:.2f} GiB "
              f"in chunks of {chunk}; RAM budget {budget_mb} MiB (store = {size / 2**20 / budget_mb:.1f}x budget); "
              f"batch {batch}; .pt shards: {shards} x {size / shards / 2**20:.0f} MiB")
        runs: dict[str, list[dict]] = {k: [] for k in MEASURES}
        for _ in range(args.repeats):  # interleaved, so drift hits every measure alike
            runs["floor"].append(run_child("floor", args.cold, store=store))
            runs["loader"].append(run_child("loader", args.cold, store=store, budget_mb=budget_mb, batch=batch))
        runs["loader_probe"].append(run_child("loader_probe", args.cold, store=store, budget_mb=budget_mb,
                                              batch=batch, grid=grid, side=side))
        runs["shards"].append(run_child("shards", args.cold, shards=shard_dir, batch=batch, batches=2))
        report(runs, size, budget_mb, images, batch)


def report(runs: dict[str, list[dict]], size: int, budget_mb: int, images: int, batch: int) -> None:
    med = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    batches = -(-images // batch)
    shard_per_batch = med["shards"] / runs["shards"][0]["batches"]
    shard_epoch = shard_per_batch * batches
    lp = runs["loader_probe"][0]
    print(f"\n| measure | seconds | GB/s | per batch | peak RSS MiB |\n|---|---|---|---|---|")
    print(f"| IO floor (raw sequential chunk reads) | {med['floor']:.3f} | {size / med['floor'] / 1e9:.2f} | | {rss['floor']:.0f} |")
    print(f"| shuffled epoch, loader alone | {med['loader']:.3f} | {size / med['loader'] / 1e9:.2f} | "
          f"{med['loader'] / batches * 1e3:.1f} ms | {rss['loader']:.0f} |")
    print(f"| shuffled epoch, loader + probe step | {lp['seconds']:.3f} | | {lp['seconds'] / batches * 1e3:.1f} ms | "
          f"{rss['loader_probe']:.0f} |")
    print(f"| probe steps alone (one in-memory batch) | {lp['compute_only_seconds']:.3f} | | | |")
    print(f"| hand-made .pt shards, per-sample shuffled (epoch extrapolated from {runs['shards'][0]['batches']} batches) | "
          f"{shard_epoch:.1f} | | {shard_per_batch:.2f} s | {rss['shards']:.0f} |")
    ratio = med["loader"] / med["floor"]
    speedup = shard_per_batch / (med["loader"] / batches)
    chunks = runs["loader"][0]["mean_chunks_per_batch"]
    print(f"\nwindow: {runs['loader'][0]['window_chunks']} chunks; mean distinct chunks per batch of {batch}: {chunks:.1f}")
    print(f"{'PASS' if ratio <= 1.25 else 'FAIL'} shuffled epoch / IO floor = {ratio:.2f} (target <= 1.25)")
    print(f"{'PASS' if rss['loader'] <= budget_mb + 1024 else 'FAIL'} loader peak RSS {rss['loader']:.0f} MiB "
          f"<= budget {budget_mb} MiB + 1 GiB, store {size / 2**20 / budget_mb:.1f}x budget")
    print(f"{'PASS' if speedup >= 100 else 'FAIL'} loader vs hand-made shards, per batch: {speedup:.0f}x faster (target >= 100x)")
    overlap = lp["seconds"] / max(lp["compute_only_seconds"], med["loader"])
    print(f"info loader + probe / max(probe alone, loader alone) = {overlap:.2f} (1.0 = reading fully hidden)")


if __name__ == "__main__":
    main()
