"""Fabricate a finished results/ tree (docs/DESIGN.md layout) for fast report tests.

No model runs: metrics follow a smooth made-up layer profile, predictions are the ground truth
with blocks of wrong classes, benchmarks are plausible numbers. Vision-tower and projector
probes of the two LLaVA prompts are identical (as in reality: they come before the LLM), LLM
layers differ, so the prompt comparison shows both cases.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.data.ade20k import CLASS_NAMES
from layerprobe.models.layers import parse_probe_id, split_seed
from layerprobe.models.specs import model_spec, requested_keys
from layerprobe.probing.intervals import miou_interval
from layerprobe.probing.metrics import ImageCounts
from layerprobe.report.inputs import ProbeFiles, ReportInputs, data_keys, probe_keys, scan_keys, store_keys
from layerprobe.report.page import build_report

CLASSES = [0, 2, 3, 4, 6, 12, 20, 26]  # wall, sky, floor, tree, road, person, car, sea
EPOCHS = 6


def fake_config(root: Path, scan: bool = True) -> dict[str, Any]:
    raw = {
        "dataset": {"root": str(root / "ADEChallengeData2016"),
                    "synthetic": {"training": 40, "validation": 6, "classes": len(CLASSES)}},
        "store": {"chunk_images": 8, "parts": 2, "disk_quota_gb": 1},
        "models": {
            "tiny_vit": {"kind": "open_clip", "arch": "layerprobe-tiny-vit", "pretrained": "x.pt",
                         "tiny": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4},
                         "layers": [0, 1, 2, 3, 4]},
            "tiny_llava": {"kind": "llava", "hub_id": "results/models/tiny_llava",
                           "tiny": {"image_size": 48, "patch_size": 8, "width": 32, "layers": 2,
                                    "text_width": 48, "text_layers": 3},
                           "layers": [0, 1, 2, 3], "vision_layers": [1, 2], "projector": True,
                           "prompt_format": "USER: {prompt}\n<image> ASSISTANT:",
                           "prompts": [{"id": "describe", "text": "Describe the image in detail"},
                                       {"id": "describe_category",
                                        "text": "Describe the {category} in the image in detail"}]},
        },
        "probe": {"epochs": EPOCHS, "ram_budget_mb": 256},
        "scan": {"enabled": scan},
        "report": {"qualitative_images": 3},
    }
    return lp_config.validate(raw)


def fabricate(workdir: Path, config: dict[str, Any], seed: int = 0, classes: list[int] | None = None) -> Path:
    """Write results/ under `workdir`; returns the results directory.

    `classes`: class ids present in the validation labels (default CLASSES, 8 of them; pass
    e.g. range(150) to check the layout of a full ADE20K-sized per-class map)."""
    rng = np.random.default_rng(seed)
    classes = list(CLASSES if classes is None else classes)
    results = workdir / "results"
    n_val = (config["dataset"]["synthetic"] or {}).get("validation", 6)
    labels = {res: _data_store(results, res, n_val, rng, classes, config) for res in lp_config.resolutions(config)}
    for name, model in config["models"].items():
        spec = model_spec(name, model)
        for prompt in lp_config.prompt_ids(model):
            _store_manifest(results, name, prompt, model, config)
            for probe in lp_config.probe_ids(model, config["probe"]["seeds"]):
                key, cls = parse_probe_id(probe)
                seed = split_seed(probe)[1]  # a further seed: the same probe, a little noise
                score = _profile(name, prompt, key, spec) + (0.02 if cls else 0.0) + (0.004 * seed if seed else 0.0)
                _probe(results / "probes" / name / prompt / probe, name, prompt, key, score,
                       labels[spec.image_size], config["probe"]["saved_predictions"], classes,
                       config["probe"]["epochs"], lp_fp.probe(config, name, prompt, probe))
            if (name, prompt) in lp_config.scan_targets(config):
                _scan(results, name, prompt, spec, rng, lp_fp.scan(config, name, prompt))
    _benchmarks(results, config, rng)
    return results


def _profile(model: str, prompt: str, key: str, spec: Any) -> float:
    """A made-up mIoU: rises through the tower, drops at the projector, recovers in the LLM."""
    kind, index = (key.split("_")[0], int(key.split("_")[1])) if key != "projector" else ("projector", 0)
    if spec.kind == "open_clip":
        return 0.20 + 0.25 * math.sin(math.pi * 0.8 * index / spec.depth)
    if kind == "vision":
        return 0.18 + 0.2 * index / spec.vision_depth
    if kind == "projector":
        return 0.30
    # The {category} oracle gains over the general prompt; its shuffled control does not.
    bonus = {"describe": 0.0, "imagine_category": -0.02, "describe_category+shuffled": 0.0}.get(prompt, 0.03) \
        * index / spec.depth
    return 0.26 + 0.12 * math.sin(math.pi * 0.7 * index / spec.depth) + bonus - (0.02 if index == 1 else 0.0)


def _data_store(results: Path, res: int, n: int, rng: np.random.Generator, classes: list[int],
                config: dict[str, Any]) -> np.ndarray:
    path = results / "data" / f"{res}px.zarr"
    group = zarr.open_group(path, mode="w")
    labels = np.zeros((n, res, res), np.uint8)
    images = np.zeros((n, res, res, 3), np.uint8)
    for i in range(n):
        labels[i] = classes[0]
        rects = max(4, -(-2 * len(classes) // n))  # every class appears somewhere (most likely)
        for r in range(rects):
            size = max(2, res // 4 if rects <= 8 else res // 8)
            y, x, h, w = rng.integers(0, res, 2).tolist() + rng.integers(size, 2 * size, 2).tolist()
            labels[i, y:y + h, x:x + w] = classes[1:][(i * rects + r) % (len(classes) - 1)] if rects > 8 \
                else rng.choice(classes[1:])
        labels[i, :2, :2] = 255
        base = (labels[i].astype(np.int32) * 37 % 200 + 30).astype(np.uint8)
        images[i] = np.stack([base, base[::-1], base.T], -1) + rng.integers(0, 20, (res, res, 3), dtype=np.uint8)
    group.create_array("validation/images", data=images, chunks=(4, res, res, 3))
    group.create_array("validation/labels", data=labels, chunks=(4, res, res))
    ids = [f"ADE_val_{i:08d}" for i in range(1, n + 1)]
    group.attrs.update({"resolution": res, "validation_image_ids": ids, "training_image_ids": [],
                        "class_names": list(CLASS_NAMES)})
    manifest = {"store": f"results/data/{res}px.zarr", "resolution": res, "images": {"training": 40, "validation": n},
                "fingerprint": lp_fp.data(config, res).record()}
    (results / "data" / f"{res}px.json").write_text(json.dumps(manifest))
    return labels


def _probe(folder: Path, model: str, prompt: str, key: str, score: float, labels: np.ndarray, keep: int,
           classes: list[int], epochs: int, fingerprint: lp_fp.Fingerprint) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key_rng = np.random.default_rng(zlib.crc32(f"{model}/{key}".encode()))  # identical across prompts
    per_class = [None] * len(CLASS_NAMES)
    for i, c in enumerate(classes):
        per_class[c] = float(np.clip(score + 0.25 - 0.5 * i / len(classes) + key_rng.normal(0, 0.03), 0, 1))
    per_class[classes[-1]] = 0.0  # a class the probe never gets right
    miou = float(np.nanmean([v for v in per_class if v is not None]))
    rows = _epochs(miou, key_rng, epochs)
    best = max(rows, key=lambda r: r["test_miou"])
    counts = _image_counts(labels, per_class, key_rng)
    counts.save(folder / "per_image.npz")
    interval = miou_interval(counts)  # placed around this probe's mIoU, as the real one is
    low, high = miou - (interval.estimate - interval.low), miou + (interval.high - interval.estimate)
    metrics = {"model": model, "prompt": prompt, "layer": key, "miou": miou, "miou_low": low, "miou_high": high,
               "acc": min(0.95, miou + 0.35),
               "best_epoch": best["epoch"], "best_test_miou": best["test_miou"], "epochs": epochs,
               "per_class_iou": per_class, "class_names": list(CLASS_NAMES), "run": {"loader_mode": "chunks"},
               "fingerprint": fingerprint.record()}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    header = "epoch,loss,running_train_miou,running_train_acc,test_miou,test_acc\n"
    (folder / "epochs.csv").write_text(header + "".join(
        f"{r['epoch']},{r['loss']:.6f},{r['running_train_miou']:.6f},{r['running_train_acc']:.6f},{r['test_miou']:.6f},"
        f"{r['test_acc']:.6f}\n" for r in rows))
    pred = labels[:keep].copy()
    res = pred.shape[1]
    wrong = max(1, int((1 - miou) * 6))
    for i in range(len(pred)):
        for _ in range(wrong):
            y, x = key_rng.integers(0, res - res // 4, 2)
            pred[i, y:y + res // 4, x:x + res // 4] = key_rng.choice(classes)
    pred[pred == 255] = classes[0]
    ids = np.array([f"ADE_val_{i:08d}" for i in range(1, keep + 1)])
    np.savez_compressed(folder / "predictions.npz", ids=ids, pred=pred.astype(np.uint8))


def _image_counts(labels: np.ndarray, per_class: list[float | None], rng: np.random.Generator) -> ImageCounts:
    """Per-image counts whose per-class IoU is near `per_class`: each image predicts a class's
    area once, hitting a fraction t = 2 IoU / (1 + IoU) of it (IoU = t / (2 - t)), with per-image noise."""
    n, c = len(labels), len(CLASS_NAMES)
    area = np.stack([np.bincount(lab[lab != 255].ravel(), minlength=c)[:c] for lab in labels]).astype(np.int64)
    iou = np.array([0.0 if v is None else v for v in per_class])
    hit = np.clip(2 * iou / (1 + iou) + rng.normal(0, 0.08, (n, 1)), 0, 1)
    intersect = np.round(area * hit).astype(np.int64)
    return ImageCounts([f"ADE_val_{i:08d}" for i in range(1, n + 1)], intersect, 2 * area - intersect, area.sum(1))


def _epochs(final: float, rng: np.random.Generator, epochs: int) -> list[dict[str, Any]]:
    """Test mIoU rises; for some layers it peaks before the last epoch and dips back. The last
    epoch's test mIoU is `final` (metrics.json scores the final model, as the probe does)."""
    peak = epochs if rng.random() < 0.5 else max(1, epochs - int(rng.integers(1, 3)))
    top = final if peak == epochs else final + 0.01
    rise = [1 - math.exp(-e / 2) for e in range(1, epochs + 1)]
    rows = []
    for e in range(1, epochs + 1):
        if e <= peak:
            test = top * rise[e - 1] / rise[peak - 1] - (0 if e == peak else abs(rng.normal(0, 0.002)))
        else:
            test = top - (top - final) * (e - peak) / (epochs - peak)
        t = rise[e - 1]
        rows.append({"epoch": e, "loss": 2.5 * (1 - t) + 0.6, "running_train_miou": min(1, final * t * 1.15),
                     "running_train_acc": min(1, (final + 0.4) * t), "test_miou": test,
                     "test_acc": min(1, (final + 0.35) * t)})
    return rows


def _scan(results: Path, model: str, prompt: str, spec: Any, rng: np.random.Generator,
          fingerprint: lp_fp.Fingerprint) -> None:
    path = results / "scan" / model / f"{prompt}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["model,prompt,layer,variant,best_lambda,miou,acc,holdout_miou"]
    for key in _all_keys(spec):
        miou = _profile(model, prompt, key, spec) * 0.8 + rng.normal(0, 0.01)
        lines.append(f"{model},{prompt},{key},patch,{rng.choice([0.1, 1.0, 10.0])},{miou:.6f},{miou + 0.3:.6f},"
                     f"{miou + 0.02:.6f}")
    path.write_text("\n".join(lines) + "\n")
    lp_fp.write(path.with_suffix(".json"), fingerprint)


def _all_keys(spec: Any) -> list[str]:
    from layerprobe.models.layers import sort_keys

    return sort_keys(list(spec.dims()))


def _store_manifest(results: Path, model: str, prompt: str, cfg: dict[str, Any], config: dict[str, Any]) -> None:
    path = results / "features" / model / f"{prompt}.manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = requested_keys(cfg)
    manifest = {"store": f"results/features/{model}/{prompt}.zarr", "model": model, "prompt_id": prompt,
                "layers": keys, "bytes": 123_456 * len(keys), "images": {"training": 40, "validation": 6},
                "fingerprint": lp_fp.store(config, model, prompt).record()}
    path.write_text(json.dumps(manifest))


BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmarks(results: Path, config: dict[str, Any], rng: np.random.Generator) -> None:
    jobs = [("synthetic_dataset", "synthetic_dataset")]
    jobs += [("preprocess", f"{res}px") for res in lp_config.resolutions(config)]
    for name, model in config["models"].items():
        jobs.append(("build_tiny_model", name))
        for prompt in lp_config.prompt_ids(model):
            jobs += [("prepare_store", f"{name}/{prompt}")]
            jobs += [("extract", f"{name}/{prompt}.part{p}") for p in range(config["store"]["parts"])]
            jobs += [("finalize_store", f"{name}/{prompt}"), ("scan", f"{name}/{prompt}")]
            jobs += [("probe", f"{name}/{prompt}/{k}") for k in lp_config.probe_ids(model, config["probe"]["seeds"])]
    for rule, job in jobs:
        path = results / "benchmarks" / rule / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = float(rng.uniform(2, 40))
        rss = float(rng.uniform(150, 900))
        mmss = f"{int(seconds) // 3600}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"
        path.write_text(BENCH_HEADER + f"{seconds:.4f}\t{mmss}\t{rss:.2f}\t{rss * 3:.2f}\t{rss * 0.9:.2f}\t"
                        f"{rss * 0.95:.2f}\t0.10\t1.20\t85.3\t{seconds * 0.9:.2f}\n")
    first = next(iter(config["models"]))
    (results / "benchmarks" / "scan" / first / f"{lp_config.prompt_ids(config['models'][first])[0]}.tsv").write_text(
        BENCH_HEADER + "1.2\t0:00:01\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")  # too short to sample


def tree_inputs(config: dict[str, Any], results: Path) -> ReportInputs:
    """The report's inputs as the report rule names them, for a results tree laid out as the rules
    write it (results/probes/..., results/scan/..., ...): what tests hand build_report and collect."""
    results = Path(results)
    probes = {(m, p, k): ProbeFiles(*(results / "probes" / m / p / k / f for f in
                                      ("metrics.json", "epochs.csv", "predictions.npz", "per_image.npz")))
              for m, p, k in probe_keys(config)}
    scans = {(m, p): (results / "scan" / m / f"{p}.csv", results / "scan" / m / f"{p}.json")
             for m, p in scan_keys(config)}
    return ReportInputs(probes=probes, scans=scans,
                        stores={(m, p): results / "features" / m / f"{p}.manifest.json" for m, p in store_keys(config)},
                        data={name: results / "data" / f"{name}.json" for name in data_keys(config)},
                        benchmarks=results / "benchmarks", workdir=results.parent)


def build_tree_report(config: dict[str, Any], results: Path, out_html: Path) -> None:
    """build_report over a results tree, its figures beside the page (as the report rule puts them)."""
    build_report(config, tree_inputs(config, results), out_html, Path(out_html).parent / "report_files")
