"""Read a finished (or partial) run's results, as the report rule gives them (`ReportInputs`),
into pandas tables for the report.

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
from ..data.ade20k import CLASS_NAMES
from ..models.layers import CLS_SUFFIX, parse_probe_id, probe_seed, split_seed
from ..probing.intervals import Interval, paired_difference
from ..probing.metrics import ImageCounts
from .axis import LayerAxis
from .benchmarks import read_benchmarks
from .inputs import ReportInputs

Store = tuple[str, str]  # (model, prompt)


@dataclass
class Results:
    inputs: ReportInputs  # the report rule's input files
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
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # result file -> software versions
    # per_image.npz per (model, prompt, layer) row; further seeds' under (model, prompt, layer, seed)
    counts_files: dict[tuple, Path] = field(default_factory=dict)
    seed_runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # model, prompt, layer, seed, miou: every seed
    _counts: dict[tuple, ImageCounts] = field(default_factory=dict, repr=False)

    def image_counts(self, model: str, prompt: str, layer: str, seed: int | None = None) -> ImageCounts | None:
        """A probe's per-validation-image counts (prompt as in `probes`, e.g. 'none+cls'), or None;
        `seed` picks a further seed's probe (None: the first seed's, the report's main result)."""
        key = (model, prompt, layer) if seed is None else (model, prompt, layer, seed)
        if key not in self._counts and key in self.counts_files:
            self._counts[key] = ImageCounts.load(self.counts_files[key])
        return self._counts.get(key)

    def paired(self, a: tuple[str, str, str], b: tuple[str, str, str]) -> Interval | None:
        """mIoU(b) - mIoU(a) with its paired bootstrap interval; None without both counts."""
        first, second = self.image_counts(*a), self.image_counts(*b)
        if first is None or second is None:
            return None
        return paired_difference(first, second)

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
        return self.inputs.workdir


def collect(config: dict[str, Any], inputs: ReportInputs) -> Results:
    """Read every result the config expects; raises fingerprint.StaleResultError for one made
    with another config."""
    axis = LayerAxis.from_config(config)
    missing: list[str] = []
    seen = Seen()
    data = _read_data_manifests(config, inputs, seen)
    stores = _read_store_manifests(config, inputs, seen)
    probes, curves, per_class, predictions, names, counts, seed_runs = _read_probes(config, inputs, axis, missing,
                                                                                    seen)
    scan = _read_scan(config, inputs, axis, missing, seen)
    benchmarks = read_benchmarks(inputs.benchmarks, config)
    return Results(inputs=inputs, config=config, axis=axis, probes=probes, curves=curves, per_class=per_class,
                   predictions=predictions, scan=scan, stores=stores, data=data, benchmarks=benchmarks,
                   class_names=names, missing=missing, fingerprints=seen.fingerprints, versions=seen.versions,
                   counts_files=counts, seed_runs=seed_runs)


@dataclass
class Seen:
    """What every result read records: its fingerprint (checked) and the software that made it."""

    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)


def _checked(fingerprint: lp_fp.Fingerprint, recorded: dict[str, Any] | None, path: Path, seen: Seen,
             versions: Any = None) -> None:
    fingerprint.check(recorded, str(path))
    seen.fingerprints.append((str(path), fingerprint.hash))
    for i, found in enumerate(versions if isinstance(versions, list) else [versions] if versions else []):
        seen.versions[f"{path}" + (f" ({i + 1})" if isinstance(versions, list) else "")] = found


def series_prompt(prompt: str, probe: str) -> str:
    """The prompt a probe's line is drawn under: `<prompt>+cls` for the CLS variant."""
    return prompt + (CLS_SUFFIX if parse_probe_id(probe)[1] else "")


def _read_probes(config: dict[str, Any], inputs: ReportInputs, axis: LayerAxis, missing: list[str],  # noqa: ANN202
                 seen: Seen):
    rows, curve_frames, ious, predictions, counts, seed_runs = [], [], {}, {}, {}, []
    names = list(CLASS_NAMES)
    for (model, store_prompt, probe), files in inputs.probes.items():
        if not files.metrics.is_file():
            missing.append(str(files.metrics))
            continue
        metrics = json.loads(files.metrics.read_text())
        _checked(lp_fp.probe(config, model, store_prompt, probe), metrics.get("fingerprint"),
                 files.metrics, seen, metrics.get("versions"))
        layer, prompt = parse_probe_id(probe)[0], series_prompt(store_prompt, probe)
        seed = probe_seed(probe, config["probe"]["seeds"])
        seed_runs.append({"model": model, "prompt": prompt, "layer": layer, "seed": seed,
                          "miou": _float(metrics.get("miou"))})
        if split_seed(probe)[1] is not None:
            if files.per_image.is_file():
                counts[(model, prompt, layer, seed)] = files.per_image
            continue  # a further seed: its mIoU goes into the mean ± sd columns, not a row of its own
        names = metrics.get("class_names") or names
        rows.append({**_probe_row(metrics, model, prompt, layer, axis), "store_prompt": store_prompt, "probe": probe})
        ious[(model, prompt, layer)] = [np.nan if v is None else v for v in metrics.get("per_class_iou", [])]
        curve_frames.append(_read_curve(files.epochs, model, prompt, layer, missing))
        if files.per_image.is_file():
            counts[(model, prompt, layer)] = files.per_image
        else:
            missing.append(str(files.per_image))
        if files.predictions.is_file():
            with np.load(files.predictions) as npz:
                predictions[(model, prompt, layer)] = ([str(i) for i in npz["ids"]], npz["pred"])
    seed_runs = pd.DataFrame(seed_runs, columns=["model", "prompt", "layer", "seed", "miou"])
    probes = _with_seed_spread(pd.DataFrame(rows, columns=PROBE_COLUMNS), seed_runs)
    curves = pd.concat([c for c in curve_frames if c is not None] or [pd.DataFrame(columns=CURVE_COLUMNS)],
                       ignore_index=True)
    return probes, curves, _per_class_tables(ious, names), predictions, names, counts, seed_runs


PROBE_COLUMNS = ["model", "prompt", "layer", "x", "segment", "miou", "miou_low", "miou_high", "acc", "best_epoch",
                 "best_test_miou", "epochs", "loader_mode", "store_prompt", "probe", "whole_image_miou"]
CURVE_COLUMNS = ["model", "prompt", "layer", "epoch", "loss", "running_train_miou", "running_train_acc", "test_miou",
                 "test_acc"]


def _with_seed_spread(probes: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """seeds, seed_mean, seed_sd per row: over every seed's probe found (sd NaN with one seed)."""
    if runs.empty or probes.empty:
        return probes.assign(seeds=pd.Series(dtype=int), seed_mean=pd.Series(dtype=float),
                             seed_sd=pd.Series(dtype=float))
    spread = runs.groupby(["model", "prompt", "layer"])["miou"].agg(seeds="count", seed_mean="mean", seed_sd="std")
    return probes.merge(spread.reset_index(), on=["model", "prompt", "layer"], how="left")


def _probe_row(metrics: dict[str, Any], model: str, prompt: str, layer: str, axis: LayerAxis) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "layer": layer, "x": axis.position(model, layer),
            "segment": axis.segment(model, layer), "miou": _float(metrics.get("miou")),
            "miou_low": _float(metrics.get("miou_low")), "miou_high": _float(metrics.get("miou_high")),
            "acc": _float(metrics.get("acc")),
            "best_epoch": metrics.get("best_epoch"), "best_test_miou": _float(metrics.get("best_test_miou")),
            "epochs": metrics.get("epochs"), "loader_mode": (metrics.get("run") or {}).get("loader_mode", ""),
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


def _read_scan(config: dict[str, Any], inputs: ReportInputs, axis: LayerAxis, missing: list[str],
               seen: Seen) -> pd.DataFrame:
    columns = ["model", "prompt", "layer", "best_lambda", "miou", "acc", "x", "segment"]
    frames = []
    for (model, prompt), (path, sidecar) in inputs.scans.items():
        if not path.is_file():
            missing.append(str(path))
            continue
        recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        _checked(lp_fp.scan(config, model, prompt), recorded, path, seen, (recorded or {}).get("versions"))
        frames.append(pd.read_csv(path, dtype={"model": str, "prompt": str, "layer": str}))
    if not frames:
        return pd.DataFrame(columns=columns)
    scan = pd.concat(frames, ignore_index=True)
    scan["x"] = [axis.position(m, k) for m, k in zip(scan["model"], scan["layer"])]
    scan["segment"] = [axis.segment(m, k) for m, k in zip(scan["model"], scan["layer"])]
    return scan[columns]


def _read_store_manifests(config: dict[str, Any], inputs: ReportInputs, seen: Seen) -> pd.DataFrame:
    rows = []
    for (model, prompt), path in inputs.stores.items():
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text())
        _checked(lp_fp.store(config, model, prompt), manifest.get("fingerprint"), path, seen, manifest.get("versions"))
        images = manifest.get("images", {})
        rows.append({"model": model, "prompt": prompt, "layers": len(manifest.get("layers", [])),
                     "training_images": images.get("training"), "validation_images": images.get("validation"),
                     "bytes": manifest.get("bytes"), "store": manifest.get("store")})
    return pd.DataFrame(rows, columns=["model", "prompt", "layers", "training_images", "validation_images", "bytes",
                                       "store"])


def _read_data_manifests(config: dict[str, Any], inputs: ReportInputs, seen: Seen) -> dict[str, dict[str, Any]]:
    out = {}
    for res, geometry in lp_config.data_stores(config):
        name = lp_config.data_name(res, geometry)
        path = inputs.data.get(name)
        if path is not None and path.is_file():
            out[name] = json.loads(path.read_text())
            _checked(lp_fp.data(config, res, geometry), out[name].get("fingerprint"), path, seen,
                     out[name].get("versions"))
    return out


def model_resolution(config: dict[str, Any], model: str) -> int:
    return lp_config.spec(config, model).image_size


def model_data(config: dict[str, Any], model: str) -> str:
    """The data store (a key of `Results.data`) a model's probes were trained and scored on."""
    return lp_config.model_data_name(config, model)
