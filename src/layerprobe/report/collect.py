"""Read a finished (or partial) results/ tree into pandas tables for the report.

Nothing here draws: figures and HTML take a `Results`. Files the config expects but that are
missing are listed (`Results.missing`) instead of failing, so a partial run still gets a report.
A result that exists but was made with another config (its recorded fingerprint differs from the
config's) is an error naming the file and the differing keys: it never appears as current.

Series: one line per (model, prompt, CLS variant). A CLS-variant probe's rows carry the prompt
`<prompt>+cls` (e.g. `none+cls`), so every figure keyed by (model, prompt) draws it as a line of
its own; `store_prompt` and `probe` keep the store's prompt and the probe's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import config as lp_config
from .. import fingerprint as lp_fp
from ..ade20k import CLASS_NAMES
from ..layers import CLS_SUFFIX, parse_probe_id
from ..specs import model_spec
from .axis import LayerAxis
from .benchmarks import read_benchmarks

Store = tuple[str, str]  # (model, prompt)


@dataclass
class Results:
    root: Path  # the results/ directory
    config: dict[str, Any]
    axis: LayerAxis
    probes: pd.DataFrame  # one row per (model, prompt, layer), forward order, with x position
    curves: pd.DataFrame  # epochs.csv rows with model, prompt, layer
    per_class: dict[Store, pd.DataFrame]  # layers x class names, IoU (NaN = absent)
    predictions: dict[tuple[str, str, str], tuple[list[str], np.ndarray]]
    scan: pd.DataFrame
    stores: pd.DataFrame  # feature store manifests
    data: dict[str, dict[str, Any]]  # data store name (`224px`, `224px_pad`) -> data manifest
    benchmarks: pd.DataFrame
    class_names: list[str]
    missing: list[str] = field(default_factory=list)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)  # (result file, fingerprint hash)

    def store_list(self) -> list[Store]:
        """(model, prompt) pairs with probe results, in config order."""
        seen = self.probes[["model", "prompt"]].drop_duplicates()
        return [(m, p) for m, p in seen.itertuples(index=False)]

    def model_axis(self, model: str, keys: list[str] | None = None) -> LayerAxis:
        """Axis for a panel showing one model (default keys: its probed layers)."""
        if keys is None:
            keys = self.probes[self.probes["model"] == model]["layer"].tolist()
        return LayerAxis.single(self.config, model, keys)

    def workdir(self) -> Path:
        """Paths inside manifests are relative to the directory Snakemake ran in."""
        return self.root.parent


def collect(config: dict[str, Any], results: Path) -> Results:
    """Read every result the config expects; raises fingerprint.StaleResultError for one made
    with another config."""
    results = Path(results)
    axis = LayerAxis.from_config(config)
    missing: list[str] = []
    seen: list[tuple[str, str]] = []
    data = _read_data_manifests(config, results, seen)
    stores = _read_store_manifests(config, results, seen)
    probes, curves, per_class, predictions, names = _read_probes(config, results, axis, missing, seen)
    scan = _read_scan(config, results, axis, missing, seen)
    return Results(root=results, config=config, axis=axis, probes=probes, curves=curves, per_class=per_class,
                   predictions=predictions, scan=scan, stores=stores, data=data,
                   benchmarks=read_benchmarks(results, config), class_names=names, missing=missing,
                   fingerprints=seen)


def _checked(fingerprint: lp_fp.Fingerprint, recorded: dict[str, Any] | None, path: Path,
             seen: list[tuple[str, str]]) -> None:
    fingerprint.check(recorded, str(path))
    seen.append((str(path), fingerprint.hash))


def expected_probes(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(model, prompt, probe name) of every probe the config defines."""
    return [(m, p, k) for m, cfg in config["models"].items() for p in lp_config.prompt_ids(cfg)
            for k in lp_config.probe_ids(cfg)]


def series_prompt(prompt: str, probe: str) -> str:
    """The prompt a probe's line is drawn under: `<prompt>+cls` for the CLS variant."""
    return prompt + (CLS_SUFFIX if parse_probe_id(probe)[1] else "")


def _read_probes(config: dict[str, Any], results: Path, axis: LayerAxis, missing: list[str],  # noqa: ANN202
                 seen: list[tuple[str, str]]):
    rows, curve_frames, ious, predictions = [], [], {}, {}
    names = list(CLASS_NAMES)
    for model, store_prompt, probe in expected_probes(config):
        folder = results / "probes" / model / store_prompt / probe
        if not (folder / "metrics.json").is_file():
            missing.append(str(folder / "metrics.json"))
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        _checked(lp_fp.probe(config, model, store_prompt, probe), metrics.get("fingerprint"),
                 folder / "metrics.json", seen)
        layer, prompt = parse_probe_id(probe)[0], series_prompt(store_prompt, probe)
        names = metrics.get("class_names") or names
        rows.append({**_probe_row(metrics, model, prompt, layer, axis), "store_prompt": store_prompt, "probe": probe})
        ious[(model, prompt, layer)] = [np.nan if v is None else v for v in metrics.get("per_class_iou", [])]
        curve_frames.append(_read_curve(folder / "epochs.csv", model, prompt, layer, missing))
        if (folder / "predictions.npz").is_file():
            with np.load(folder / "predictions.npz") as npz:
                predictions[(model, prompt, layer)] = ([str(i) for i in npz["ids"]], npz["pred"])
    probes = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    curves = pd.concat([c for c in curve_frames if c is not None] or [pd.DataFrame(columns=CURVE_COLUMNS)],
                       ignore_index=True)
    return probes, curves, _per_class_tables(ious, names), predictions, names


PROBE_COLUMNS = ["model", "prompt", "layer", "x", "segment", "miou", "acc", "best_epoch", "best_test_miou",
                 "epochs", "loader_mode", "store_prompt", "probe", "whole_image_miou"]
CURVE_COLUMNS = ["model", "prompt", "layer", "epoch", "loss", "train_miou", "train_acc", "test_miou", "test_acc"]


def _probe_row(metrics: dict[str, Any], model: str, prompt: str, layer: str, axis: LayerAxis) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "layer": layer, "x": axis.position(model, layer),
            "segment": axis.segment(model, layer), "miou": _float(metrics.get("miou")), "acc": _float(metrics.get("acc")),
            "best_epoch": metrics.get("best_epoch"), "best_test_miou": _float(metrics.get("best_test_miou")),
            "epochs": metrics.get("epochs"), "loader_mode": metrics.get("loader_mode", ""),
            "whole_image_miou": _float(metrics.get("whole_image_miou"))}  # pad geometry only


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _read_curve(path: Path, model: str, prompt: str, layer: str, missing: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        missing.append(str(path))
        return None
    frame = pd.read_csv(path)
    return frame.assign(model=model, prompt=prompt, layer=layer)[CURVE_COLUMNS]


def _per_class_tables(ious: dict[tuple[str, str, str], list[float]], names: list[str]) -> dict[Store, pd.DataFrame]:
    """Per store a layers x classes IoU table (rows in forward order, as collected)."""
    tables: dict[Store, dict[str, list[float]]] = {}
    for (model, prompt, layer), values in ious.items():
        tables.setdefault((model, prompt), {})[layer] = values
    return {store: pd.DataFrame.from_dict(rows, orient="index", columns=names[:len(next(iter(rows.values())))])
            for store, rows in tables.items()}


def _read_scan(config: dict[str, Any], results: Path, axis: LayerAxis, missing: list[str],
               seen: list[tuple[str, str]]) -> pd.DataFrame:
    columns = ["model", "prompt", "layer", "best_lambda", "miou", "acc", "x", "segment"]
    frames = []
    for model, prompt in lp_config.scan_targets(config):
        path = results / "scan" / model / f"{prompt}.csv"
        if not path.is_file():
            missing.append(str(path))
            continue
        sidecar = path.with_suffix(".json")
        recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        _checked(lp_fp.scan(config, model, prompt), recorded, path, seen)
        frames.append(pd.read_csv(path, dtype={"model": str, "prompt": str, "layer": str}))
    if not frames:
        return pd.DataFrame(columns=columns)
    scan = pd.concat(frames, ignore_index=True)
    scan["x"] = [axis.position(m, k) for m, k in zip(scan["model"], scan["layer"])]
    scan["segment"] = [axis.segment(m, k) for m, k in zip(scan["model"], scan["layer"])]
    return scan[columns]


def _read_store_manifests(config: dict[str, Any], results: Path, seen: list[tuple[str, str]]) -> pd.DataFrame:
    rows = []
    for model, cfg in config["models"].items():
        for prompt in lp_config.prompt_ids(cfg):
            path = results / "features" / model / f"{prompt}.manifest.json"
            if not path.is_file():
                continue
            manifest = json.loads(path.read_text())
            _checked(lp_fp.store(config, model, prompt), manifest.get("fingerprint"), path, seen)
            images = manifest.get("images", {})
            rows.append({"model": model, "prompt": prompt, "layers": len(manifest.get("layers", [])),
                         "training_images": images.get("training"), "validation_images": images.get("validation"),
                         "bytes": manifest.get("bytes"), "store": manifest.get("store")})
    return pd.DataFrame(rows, columns=["model", "prompt", "layers", "training_images", "validation_images", "bytes",
                                       "store"])


def _read_data_manifests(config: dict[str, Any], results: Path,
                         seen: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    out = {}
    for res, geometry in lp_config.data_stores(config):
        name = lp_config.data_name(res, geometry)
        path = results / "data" / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
            _checked(lp_fp.data(config, res, geometry), out[name].get("fingerprint"), path, seen)
    return out


def model_resolution(config: dict[str, Any], model: str) -> int:
    return model_spec(model, config["models"][model]).image_size


def model_data(config: dict[str, Any], model: str) -> str:
    """The data store (a key of `Results.data`) a model's probes were trained and scored on."""
    return lp_config.model_data_name(config, model)
