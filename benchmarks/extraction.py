"""Benchmark: feature extraction (forward + fp16 + Zarr writer thread) vs the bare forward, and
the early stop (a forward up to block k of L costs about k/L of the full one).

A tiny random open_clip ViT (built like the demo's, loaded through `load_backbone`) on a synthetic
ADE20K-layout dataset preprocessed into a Zarr data store as the workflow does (data chunks of
`--chunk-images`, the same number as the feature store's). The feature store is split into parts
(`extract_part`'s own `part`/`parts`, as the workflow's parallel jobs use); for every part the cases run
side by side, in a rotating order, so a busy stretch of a shared machine hits all of them alike:

- bare:    `backbone.visual(normalize(images))` over the batches extract_part forms for that part
           (chunk by chunk, `batch_size` per forward), images already in memory, no hooks, output
           discarded: the compute floor;
- read:    what extract_part spends reading those images and labels from the data store (`_gather`);
- capture: `backbone.extract(images, None, keys)` for every requested layer, output discarded
           (hooks, CLS/patch split, fp32 copies);
- extract: `layerprobe.features.extract.extract_part(part=p)` into a real feature store (data reads, forward,
           fp16 conversion, writer thread writing every array + the chunk's completion marker).
           The store's empty arrays are created (`store.prepare`) before each round (timed apart:
           a once-per-store job) and deleted after it.

Ratios are medians over the (round, part) pairs of t(bare) / t(case) = images/s of the case over
images/s of the bare forward. PASS when extract >= 0.9 x bare. Early stop: `backbone.extract`
with the single key layer_k, k in (0, L/4, L/2, L), on the first parts; PASS when
t(k)/t(L) <= k/L + 0.05 for each k > 0 (t(0) = normalisation + patch embedding + ln_pre, the fixed
part, is reported). Then a tiny LLaVA (vision tower + projector + LLM, prompts filled per image)
through the same throughput cases (bare = the model forward on precomputed processor outputs).
Peak RSS is VmHWM, reset before every run (see _common.py). `--diagnose` adds variants of
extract_part that emulate possible changes to layerprobe.features.extract (monkeypatched here, src untouched).

    .venv/bin/python benchmarks/extraction.py [--quick] [--no-llava] [--diagnose]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from layerprobe.data.preprocess import open_data, preprocess  # noqa: E402
from layerprobe.data.synthetic import write_dataset  # noqa: E402
from layerprobe.features import extract as X  # noqa: E402
from layerprobe.features import markers, store  # noqa: E402
from layerprobe.fingerprint import Fingerprint  # noqa: E402
from layerprobe.models.backbones import load_backbone  # noqa: E402
from layerprobe.models.layers import layer_key  # noqa: E402
from layerprobe.models.specs import requested_keys  # noqa: E402
from layerprobe.models.tiny import openclip as tiny_clip  # noqa: E402

THROUGHPUT = 0.9  # extract images/s >= THROUGHPUT x bare forward images/s
SLACK = 0.05  # early stop: t(k)/t(L) <= k/L + SLACK
QUICK = {"training": 168, "validation": 24, "repeats": 2, "part_chunks": 4}
FULL = {"training": 672, "validation": 96, "repeats": 3, "part_chunks": 16}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smaller run (~1 min on a quiet machine): {QUICK}")
    parser.add_argument("--training", type=int, default=None, help=f"default {FULL['training']}")
    parser.add_argument("--validation", type=int, default=None, help=f"default {FULL['validation']}")
    parser.add_argument("--repeats", type=int, default=None, help=f"rounds over the store, default {FULL['repeats']}")
    parser.add_argument("--part-chunks", type=int, default=None,
                        help=f"chunks per extract_part call, default {FULL['part_chunks']}")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-images", type=int, default=16)
    parser.add_argument("--early-stop-parts", type=int, default=2, help="parts used for the early-stop cases")
    parser.add_argument("--llava-parts", type=int, default=2, help="parts used for the LLaVA cases")
    parser.add_argument("--no-llava", action="store_true", help="skip the tiny LLaVA cases")
    parser.add_argument("--diagnose", action="store_true", help="add extract_part variants (writer off, ...)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and stores here (default: temp dir)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------- setup

def build_clip(args: argparse.Namespace, work: Path) -> tuple[Any, dict[str, Any]]:
    tiny = {"image_size": args.image_size, "patch_size": args.patch_size, "width": args.width,
            "layers": args.layers, "heads": args.heads, "mixing": 1.0, "seed": 0}
    arch = "layerprobe-bench-extract-vit"
    weights = work / "bench_extract_vit.pt"
    tiny_clip.build(arch, weights, tiny)
    model = {"kind": "open_clip", "arch": arch, "pretrained": str(weights), "tiny": tiny,
             "layers": list(range(args.layers + 1)), "batch_size": args.batch_size, "vision_layers": [],
             "projector": False}
    return load_backbone("bench_vit", model, "cpu"), model


def build_llava(args: argparse.Namespace, work: Path) -> tuple[Any, dict[str, Any]]:
    from layerprobe.models.backbones.llava import LlavaBackbone
    from layerprobe.models.tiny.llava import build_tiny_llava

    tiny = {"image_size": args.image_size, "patch_size": args.patch_size, "width": args.width // 2,
            "layers": args.layers // 2, "heads": args.heads, "text_width": args.width,
            "text_layers": args.layers // 2, "mixing": 0.0, "seed": 0}
    path = build_tiny_llava(work / "tiny_llava", image_size=tiny["image_size"], patch_size=tiny["patch_size"],
                            vision_width=tiny["width"], vision_layers=tiny["layers"], text_width=tiny["text_width"],
                            text_layers=tiny["text_layers"], heads=tiny["heads"], seed=0)
    fmt = "USER: {prompt}\n<image> ASSISTANT:"
    model = {"kind": "llava", "hub_id": str(path), "tiny": tiny, "layers": list(range(tiny["text_layers"] + 1)),
             "vision_layers": [tiny["layers"] - 1], "projector": True, "batch_size": args.batch_size // 2,
             "dtype": "float32", "attn_implementation": "sdpa", "prompt_format": fmt,
             "prompts": [{"id": "describe_category", "text": "Describe the {category} in the image in detail"}]}
    return LlavaBackbone("bench_llava", str(path), dtype="float32", device="cpu", prompt_format=fmt), model


def build_data(args: argparse.Namespace, work: Path) -> Any:
    root = write_dataset(work / "ADEChallengeData2016", training=args.training, validation=args.validation,
                         height=args.image_size + 16, width=args.image_size * 4 // 3, classes=12)
    path = work / f"{args.image_size}px.zarr"
    preprocess(root, path, work / f"{args.image_size}px.json", args.image_size, {}, chunk_images=args.chunk_images)
    return open_data(path)


Batches = list[tuple[np.ndarray, "list[str] | None"]]


def part_batches(layout: store.Layout, data: Any, part: int, parts: int, batch_size: int,
                 with_prompts: bool = False) -> Batches:
    """The batches extract_part feeds the backbone for one part (store order, chunk by chunk)."""
    fill = X.store_prompt_filler(layout, data) if with_prompts else None
    out: Batches = []
    for split, chunk in store.part_chunks(layout, part, parts):
        start, stop = layout.rows(chunk, split)
        images, labels, _ = X._gather(data, split, layout.orders[split][start:stop])
        prompts = fill(split, labels, layout.orders[split][start:stop]) if fill else None
        for b in range(0, len(images), batch_size):
            out.append((images[b:b + batch_size], prompts[b:b + batch_size] if prompts else None))
    return out


class Target:
    """One feature store extracted part by part; recreated empty before every round."""

    def __init__(self, name: str, model: dict[str, Any], prompt_id: str, backbone: Any, data: Any, path: Path,
                 layout: store.Layout, parts: int, chunk_images: int) -> None:
        self.name, self.model, self.prompt_id, self.backbone, self.data = name, model, prompt_id, backbone, data
        self.path, self.layout, self.parts, self.chunk_images = path, layout, parts, chunk_images
        self.keys = requested_keys(model)
        self.creation: list[float] = []

    def reset(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        t0 = time.perf_counter()
        store.prepare(self.path, self.layout, self.keys)
        self.creation.append(time.perf_counter() - t0)

    def unmark(self, part: int) -> None:
        """Forget a part: its markers and its chunk files, so the next run writes new files as a
        first extraction does (overwriting existing files costs more on ext4)."""
        for split, chunk in store.part_chunks(self.layout, part, self.parts):
            markers.marker(self.path, split, chunk).unlink(missing_ok=True)
            for array in (self.path / split).iterdir():
                shutil.rmtree(array / "c" / str(chunk), ignore_errors=True)

    def extract(self, part: int) -> Callable[[], dict[str, Any]]:
        return lambda: X.extract_part(self.backbone, self.data, self.path, self.layout, self.keys, part, self.parts,
                                      self.model["batch_size"])

    def check(self) -> str:
        """The last round's store is complete (every chunk marked, manifest written); a part left
        unmarked by a diagnostic variant (writer off) is extracted again first, untimed."""
        for part in range(self.parts):
            self.extract(part)()
        written = store.finalize(self.path, self.path.with_suffix(".manifest.json"), self.keys)
        assert not markers.missing_work(self.path, self.layout.all_chunks(), self.keys)
        return f"{written['bytes'] / C.MB:.1f} MB on disk, {len(written['layers'])} arrays x " \
               f"{sum(written['images'].values())} images"


def read_case(layout: store.Layout, data: Any, part: int, parts: int) -> Callable[[], None]:
    def run() -> None:
        for split, chunk in store.part_chunks(layout, part, parts):
            start, stop = layout.rows(chunk, split)
            X._gather(data, split, layout.orders[split][start:stop])
    return run


# ----------------------------------------------------------------------------- cases per part

def clip_cases(backbone: Any, batches: Batches, keys: list[str]) -> dict[str, Callable[[], None]]:
    @torch.inference_mode()
    def bare() -> None:
        for images, _ in batches:
            backbone.visual(backbone.normalize(torch.from_numpy(images)))

    def capture() -> None:
        for images, _ in batches:
            backbone.extract(torch.from_numpy(images), None, keys)

    return {"bare": bare, "capture": capture}


def llava_cases(backbone: Any, batches: Batches, keys: list[str]) -> dict[str, Callable[[], None]]:
    inputs = [backbone.inputs(torch.from_numpy(images), prompts) for images, prompts in batches]

    @torch.inference_mode()
    def bare() -> None:  # processor outputs precomputed: the model forward alone (no hooks, no lm_head)
        for batch in inputs:
            backbone.model.model(**batch, use_cache=False)

    def processor() -> None:
        for images, prompts in batches:
            backbone.inputs(torch.from_numpy(images), prompts)

    def capture() -> None:
        for images, prompts in batches:
            backbone.extract(torch.from_numpy(images), prompts, keys)

    return {"bare": bare, "processor": processor, "capture": capture}


def early_stop_cases(backbone: Any, batches: Batches, ks: list[int]) -> dict[str, Callable[[], None]]:
    def case(k: int) -> Callable[[], None]:
        def run() -> None:
            for images, _ in batches:
                backbone.extract(torch.from_numpy(images), None, [layer_key(k)])
        return run

    return {f"k={k}": case(k) for k in ks}


# ----------------------------------------------------------------------------- diagnostics

def _cached_write(self: X.ChunkWriter, split: str, chunk: int, start: int, arrays: dict, info: dict) -> None:
    """ChunkWriter._write with the zarr array objects opened once per store, not once per chunk."""
    handles = self.__dict__.setdefault("_handles", {})
    stop = start + len(next(iter(arrays.values())))
    for name, values in arrays.items():
        key = f"{split}/{name}"
        if key not in handles:
            handles[key] = self.group[key]
        handles[key][start:stop] = values
    markers.write_marker(self.store_path, split, chunk, info)


def _gathered_write(self: X.ChunkWriter, split: str, chunk: int, start: int, arrays: dict, info: dict) -> None:
    """Cached handles, and every array of the chunk written in one round trip to zarr's event loop."""
    import asyncio

    from zarr.core.sync import sync

    handles = self.__dict__.setdefault("_handles", {})
    stop = start + len(next(iter(arrays.values())))
    for name in arrays:
        if f"{split}/{name}" not in handles:
            handles[f"{split}/{name}"] = self.group[f"{split}/{name}"]

    async def write_all() -> None:
        await asyncio.gather(*(handles[f"{split}/{name}"].async_array.setitem(slice(start, stop), values)
                               for name, values in arrays.items()))

    sync(write_all())
    markers.write_marker(self.store_path, split, chunk, info)


def _raw_write(self: X.ChunkWriter, split: str, chunk: int, start: int, arrays: dict, info: dict) -> None:
    """The floor: each full chunk's raw bytes written as the chunk file zarr itself would write
    (uncompressed, default chunk-key encoding c/<row chunk>/0/..); a partial chunk goes through zarr."""
    stop = start + len(next(iter(arrays.values())))
    for name, values in arrays.items():
        array = self.group[f"{split}/{name}"]
        if stop - start != array.chunks[0] or start % array.chunks[0]:
            array[start:stop] = values
            continue
        path = self.store_path / split / name / "c" / str(start // array.chunks[0])
        path = path.joinpath(*["0"] * (values.ndim - 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    markers.write_marker(self.store_path, split, chunk, info)


def _inline_put(self: X.ChunkWriter, item: tuple) -> None:
    self._write(*item)


def patched(run: Callable[[], Any], **attrs: Any) -> Callable[[], Any]:
    """run() with ChunkWriter attributes replaced for its duration."""
    def wrapped() -> Any:
        saved = {k: getattr(X.ChunkWriter, k) for k in attrs}
        for k, v in attrs.items():
            setattr(X.ChunkWriter, k, v)
        try:
            return run()
        finally:
            for k, v in saved.items():
                setattr(X.ChunkWriter, k, v)
    return wrapped


def diagnose_cases(target: Target, part: int) -> dict[str, Callable[[], Any]]:
    run = target.extract(part)
    return {"extract: writer does nothing": patched(run, _write=lambda self, *a: None),
            "extract: writes in the main thread": patched(run, put=_inline_put),
            "extract: array handles cached": patched(run, _write=_cached_write),
            "extract: handles cached, one zarr call per chunk": patched(run, _write=_gathered_write),
            "extract: raw chunk files (floor)": patched(run, _write=_raw_write)}


# ----------------------------------------------------------------------------- measuring

def rounds(parts: list[int], repeats: int, cases_for: Callable[[int], dict[str, Callable[[], Any]]],
           target: Target | None = None) -> dict[str, C.Runs]:
    """Every round visits every part; at each part all cases run side by side (rotating order).
    With a target, its store is recreated before each round and the part's chunks are unmarked
    (untimed) before each extract case, so every variant really extracts the part."""
    runs: dict[str, C.Runs] = {}
    for r in range(repeats):
        if target is not None:
            target.reset()
        for i, p in enumerate(parts):
            cases = cases_for(p)
            setups = {name: (lambda p=p: target.unmark(p)) for name in cases if name.startswith("extract")} \
                if target is not None else None
            C.interleave(cases, 1, setups, out=runs, rotate=r * len(parts) + i)
    return runs


def throughput_table(runs: dict[str, C.Runs], images: list[int], lines: list[str]) -> dict[str, float]:
    """Per case: images/s (median over runs) and the median pair ratio to bare (images/s over bare's)."""
    bare = runs["bare"]
    ratios = {}
    lines.append("| case | s per part (runs) | images/s (median) | throughput / bare (median of pairs) "
                 "| CPU s / wall s | peak RSS (max) |")
    lines.append("|---|---|---|---|---|---|")
    for name, r in runs.items():
        ips = C.median([n / w for n, w in zip(images, r.wall)])
        ratio = C.median(C.pair_ratios(bare, r))
        ratios[name] = ratio
        lines.append(f"| {name} | {C.fmt_list(r.wall)} | {ips:.1f} | {ratio:.3f} | "
                     f"{C.median([c / w for c, w in zip(r.cpu, r.wall)]):.2f} | {C.mb(r.max_peak)} |")
    pairs = C.pair_ratios(bare, runs["extract"])
    total = sum(bare.wall) / sum(runs["extract"].wall)
    lines.append(f"extract/bare pairs: {C.fmt_list(pairs, 3)}; ratio of summed times {total:.3f}; CPU-time "
                 f"ratio {sum(bare.cpu) / sum(runs['extract'].cpu):.3f}")
    for name in ("read", "processor"):
        if name in runs:
            lines.append(f"{name}: {C.median(C.pair_ratios(runs[name], bare)):.3f} x the bare forward's time "
                         f"(median of pairs), a cost extract_part pays on top of the forward")
    stats = runs["extract"].results
    fwd = sum(s["forward_seconds"] for s in stats)
    wait = sum(s["writer_wait_seconds"] for s in stats)
    ext = sum(runs["extract"].wall)
    lines.append(f"inside extract_part (sums over runs): forward + fp16 loop {fwd:.2f} s ({fwd / ext:.0%}), blocked on "
                 f"the writer queue {wait:.2f} s ({wait / ext:.0%}), rest (data reads, prompts, store open, writer "
                 f"start/drain) {ext - fwd - wait:.2f} s ({(ext - fwd - wait) / ext:.0%}); bare forward over the same "
                 f"images {sum(bare.wall):.2f} s")
    return ratios


def main() -> int:
    args = parse()
    C.quiet_logging()
    began = time.perf_counter()
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rss0 = C.rss_bytes()
        backbone, model = build_clip(args, work)
        data = build_data(args, work)
        layout = X.make_layout("bench_vit", model, "none", data, args.chunk_images, 0, Fingerprint({"bench": "vit"}))
        parts = -(-len(layout.all_chunks()) // args.part_chunks)
        batches = {p: part_batches(layout, data, p, parts, args.batch_size) for p in range(parts)}
        images = {p: sum(len(b) for b, _ in batches[p]) for p in range(parts)}
        rss1 = C.rss_bytes()
        target = Target("bench_vit", model, "none", backbone, data, work / "features" / "bench_vit" / "none.zarr",
                        layout, parts, args.chunk_images)
        setup_s = time.perf_counter() - began

        def cases_for(p: int) -> dict[str, Callable[[], Any]]:
            cases = {**clip_cases(backbone, batches[p], target.keys),
                     "read": read_case(layout, data, p, parts), "extract": target.extract(p)}
            return {**cases, **(diagnose_cases(target, p) if args.diagnose else {})}

        target.reset()  # warm-up on part 0: allocator, thread pool, page cache, zarr's event loop
        for fn in cases_for(0).values():
            target.unmark(0)
            fn()
        runs = rounds(list(range(parts)), args.repeats, cases_for, target)
        n_runs = [images[p] for _ in range(args.repeats) for p in range(parts)]
        lines = [f"machine: {C.machine()}",
                 f"model: tiny open_clip ViT width {args.width}, {args.layers} blocks, {args.heads} heads, "
                 f"{args.image_size} px / patch {args.patch_size} ({backbone.grid ** 2} patch tokens + CLS), fp32; "
                 f"all {len(target.keys)} layers (layer_00..layer_{args.layers:02d}) + their CLS requested",
                 f"data: {args.training} training + {args.validation} validation synthetic images = "
                 f"{sum(images.values())}; batch {args.batch_size}; data and feature chunks {args.chunk_images} "
                 f"images; {parts} parts of <= {args.part_chunks} chunks; {args.repeats} rounds",
                 f"feature store: {target.check()}; creating its empty arrays: median "
                 f"{C.median(target.creation):.3f} s (once per store, not in the extract times)",
                 f"RSS: {C.mb(rss0)} after imports, {C.mb(rss1)} with model + batches in memory; setup {setup_s:.0f} s",
                 "", "CLIP ViT, per extract_part part:"]
        ratios = throughput_table(runs, n_runs, lines)
        lines.append(f"load average after: {C.load_average()}")
        print("\n".join(lines), flush=True)
        report = lines
        verdicts.append(C.verdict(ratios["extract"] >= THROUGHPUT,
                                  f"CLIP extract-and-write throughput = {ratios['extract']:.3f} x bare forward "
                                  f"(target >= {THROUGHPUT})"))

        # Early stop: forward up to block k of L, over the same batches.
        ks = sorted({0, args.layers // 4, args.layers // 2, args.layers})
        es_parts = list(range(min(args.early_stop_parts, parts)))
        for fn in early_stop_cases(backbone, batches[0], ks).values():
            fn()
        es = rounds(es_parts, args.repeats, lambda p: early_stop_cases(backbone, batches[p], ks))
        full = es[f"k={args.layers}"]
        share = {k: C.median(C.pair_ratios(es[f"k={k}"], full)) for k in ks}
        lines = ["", f"Early stop, backbone.extract(keys=[layer_k]) over parts {es_parts}, {args.repeats} rounds:",
                 "| k | s per part (runs) | t(k)/t(L) (median of pairs) | k/L | target <= | peak RSS (max) |",
                 "|---|---|---|---|---|---|"]
        for k in ks:
            lines.append(f"| {k} | {C.fmt_list(es[f'k={k}'].wall)} | {share[k]:.3f} | {k / args.layers:.3f} | "
                         f"{'-' if k == 0 else f'{k / args.layers + SLACK:.3f}'} | {C.mb(es[f'k={k}'].max_peak)} |")
        f0 = share[0]
        lines.append(f"fixed part t(0)/t(L) = {f0:.3f} (uint8 -> normalised fp32, patch embedding, positional "
                     f"embedding, ln_pre, hooks); expected t(k)/t(L) = {f0:.3f} + {1 - f0:.3f} k/L")
        print("\n".join(lines), flush=True)
        report += lines
        for k in ks[1:]:
            limit = k / args.layers + SLACK
            verdicts.append(C.verdict(share[k] <= limit, f"early stop k={k}/{args.layers}: t(k)/t(L) = "
                                                         f"{share[k]:.3f} (target <= {limit:.3f})"))

        if not args.no_llava:
            report += run_llava(args, work, data, verdicts)

    print(f"\ntotal benchmark time {time.perf_counter() - began:.0f} s; load average now {C.load_average()}")
    print("\n".join(verdicts))
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


def run_llava(args: argparse.Namespace, work: Path, data: Any, verdicts: list[str]) -> list[str]:
    backbone, model = build_llava(args, work)
    prompt = model["prompts"][0]["id"]
    layout = X.make_layout("bench_llava", model, prompt, data, args.chunk_images, 0, Fingerprint({"bench": "llava"}))
    parts = -(-len(layout.all_chunks()) // args.part_chunks)
    used = list(range(min(args.llava_parts, parts)))
    batches = {p: part_batches(layout, data, p, parts, model["batch_size"], with_prompts=True) for p in used}
    target = Target("bench_llava", model, prompt, backbone, data, work / "features" / "bench_llava" / f"{prompt}.zarr",
                    layout, parts, args.chunk_images)

    def cases_for(p: int) -> dict[str, Callable[[], Any]]:
        return {**llava_cases(backbone, batches[p], target.keys), "extract": target.extract(p)}

    target.reset()
    for fn in cases_for(0).values():
        target.unmark(0)
        fn()
    runs = rounds(used, args.repeats, cases_for, target)
    n_runs = [sum(len(b) for b, _ in batches[p]) for _ in range(args.repeats) for p in used]
    tiny = model["tiny"]
    lines = ["", f"Tiny LLaVA: vision width {tiny['width']} x {tiny['layers']} blocks, LLM width {tiny['text_width']} "
             f"x {tiny['text_layers']} layers, {args.image_size} px / patch {args.patch_size}, fp32; keys "
             f"{', '.join(target.keys)}; batch {model['batch_size']}; parts {used} of {parts} "
             f"({sum(n_runs[:len(used)])} images per round); bare = model forward on precomputed processor outputs",
             f"store creation: median {C.median(target.creation):.3f} s"]
    ratios = throughput_table(runs, n_runs, lines)
    lines.append(f"load average after: {C.load_average()}")
    print("\n".join(lines), flush=True)
    verdicts.append(C.verdict(ratios["extract"] >= THROUGHPUT,
                              f"LLaVA extract-and-write throughput = {ratios['extract']:.3f} x bare forward "
                              f"(target >= {THROUGHPUT}; bare excludes the processor)"))
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
