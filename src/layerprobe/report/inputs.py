"""The report's inputs, as Snakemake gives them: the package never looks for a result by path.

The report rule lists its inputs (workflow/rules/report.smk) in the order the keys here give,
and `ReportInputs.from_snakemake` pairs them back with their (model, prompt, probe) keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as lp_config

ProbeKey = tuple[str, str, str]  # (model, store id, probe id)
StoreKey = tuple[str, str]  # (model, store id)
PROBE_FILES = ("metrics", "epochs", "predictions", "per_image")


def probe_keys(config: dict[str, Any]) -> list[ProbeKey]:
    """Every probe the config defines, every seed's, in the report's input order."""
    return [(m, p, k) for m, cfg in config["models"].items() for p in lp_config.prompt_ids(cfg)
            for k in lp_config.probe_ids(cfg, config["probe"]["seeds"])]


def store_keys(config: dict[str, Any]) -> list[StoreKey]:
    return [(m, p) for m, cfg in config["models"].items() for p in lp_config.prompt_ids(cfg)]


def scan_keys(config: dict[str, Any]) -> list[StoreKey]:
    return lp_config.scan_targets(config)


def data_keys(config: dict[str, Any]) -> list[str]:
    return [lp_config.data_name(r, g) for r, g in lp_config.data_stores(config)]


@dataclass(frozen=True)
class ProbeFiles:
    metrics: Path
    epochs: Path
    predictions: Path
    per_image: Path

    @property
    def whole_image(self) -> Path:
        """Pad geometry: whole-image counts, written beside metrics.json (not a declared output)."""
        return self.metrics.with_name("whole_image_per_image.npz")


@dataclass
class ReportInputs:
    probes: dict[ProbeKey, ProbeFiles]
    scans: dict[StoreKey, tuple[Path, Path]]  # (table, fingerprint sidecar)
    stores: dict[StoreKey, Path]  # store manifests
    data: dict[str, Path]  # data store name -> data manifest
    benchmarks: Path | None = None  # the folder of Snakemake benchmark TSVs
    workdir: Path = field(default_factory=Path.cwd)  # paths recorded in manifests are relative to it

    @classmethod
    def from_snakemake(cls, config: dict[str, Any], given: Any, benchmarks: str | None) -> "ReportInputs":
        """`given`: the rule's `snakemake.input` (named lists in the order of the keys above)."""
        files = {name: [Path(f) for f in getattr(given, name)] for name in PROBE_FILES}
        keys = probe_keys(config)
        if any(len(files[name]) != len(keys) for name in PROBE_FILES):
            raise ValueError(f"the report rule gives {[len(v) for v in files.values()]} probe files per kind for "
                             f"{len(keys)} probes: its inputs and layerprobe.report.inputs disagree")
        probes = {key: ProbeFiles(*(files[name][i] for name in PROBE_FILES)) for i, key in enumerate(keys)}
        scans = dict(zip(scan_keys(config), zip(map(Path, given.scans), map(Path, given.scan_fingerprints))))
        return cls(probes=probes, scans=scans, stores=dict(zip(store_keys(config), map(Path, given.stores))),
                   data=dict(zip(data_keys(config), map(Path, given.data))),
                   benchmarks=Path(benchmarks) if benchmarks else None)
