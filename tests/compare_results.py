"""Compare two results trees of one config, number by number: what a behaviour-preserving change
(a restructure, a move of the results root) must leave identical.

    python -m tests.compare_results BEFORE_RESULTS AFTER_RESULTS

Identical, byte for byte: every feature and data-store array chunk, epochs.csv, predictions.npz
and per_image.npz, every scan table. metrics.json: every value but `run` (how that run went on its
machine) and `versions`. Records that name paths (fingerprints, manifests, store attrs) are
compared key by key and every difference is listed, so a moved results root shows up as exactly
the path-valued keys it moved. Exit status 1 when anything else differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

RECORD_SKIP = {"run", "versions"}  # machine-dependent and software provenance


def _arrays(root: Path) -> dict[str, bytes]:
    """Every chunk file of every Zarr array (the data, not the metadata) under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "/c/" in f"/{p.relative_to(root).as_posix()}"}


def _npz(path: Path) -> dict[str, bytes]:
    with np.load(path) as arrays:
        return {k: arrays[k].tobytes() + str(arrays[k].dtype).encode() + str(arrays[k].shape).encode()
                for k in arrays.files}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _record_differences(a: Any, b: Any, where: str) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    return [f"{where}: {k}: {fa.get(k, '<absent>')!r} -> {fb.get(k, '<absent>')!r}"
            for k in sorted(set(fa) | set(fb)) if k.split(".")[0] not in RECORD_SKIP and fa.get(k) != fb.get(k)]


def compare(before: Path, after: Path) -> tuple[list[str], list[str]]:
    """(numbers that differ, records that differ) between two results roots."""
    numbers: list[str] = []
    records: list[str] = []
    for kind in ("features", "data"):
        a, b = _arrays(before / kind), _arrays(after / kind)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                numbers.append(f"{kind}/{k}: " + ("missing after" if k not in b else "missing before" if k not in a
                                                  else "bytes differ"))
        for attrs in sorted((before / kind).rglob("zarr.json")):
            other = after / kind / attrs.relative_to(before / kind)
            records += _record_differences(json.loads(attrs.read_text()), json.loads(other.read_text())
                                           if other.is_file() else {}, f"{kind}/{attrs.relative_to(before / kind)}")
        for manifest in sorted((before / kind).glob("**/*.json")):
            if manifest.name == "zarr.json" or ".zarr" in manifest.as_posix():
                continue
            other = after / kind / manifest.relative_to(before / kind)
            records += _record_differences(json.loads(manifest.read_text()), json.loads(other.read_text())
                                           if other.is_file() else {}, f"{kind}/{manifest.relative_to(before / kind)}")
    for metrics in sorted((before / "probes").rglob("metrics.json")):
        folder = metrics.parent
        twin = after / "probes" / folder.relative_to(before / "probes")
        where = f"probes/{folder.relative_to(before / 'probes')}"
        if not (twin / "metrics.json").is_file():
            numbers.append(f"{where}: missing after")
            continue
        a, b = (json.loads((f / "metrics.json").read_text()) for f in (folder, twin))
        fingerprint = (a.pop("fingerprint", None), b.pop("fingerprint", None))
        numbers += _record_differences(a, b, f"{where}/metrics.json")
        records += _record_differences(fingerprint[0], fingerprint[1], f"{where}/metrics.json fingerprint")
        if (folder / "epochs.csv").read_bytes() != (twin / "epochs.csv").read_bytes():
            numbers.append(f"{where}/epochs.csv differs")
        for name in ("predictions.npz", "per_image.npz", "whole_image_per_image.npz"):
            if (folder / name).is_file() and _npz(folder / name) != _npz(twin / name):
                numbers.append(f"{where}/{name} differs")
    for table in sorted((before / "scan").rglob("*.csv")):
        twin = after / "scan" / table.relative_to(before / "scan")
        if not twin.is_file() or table.read_bytes() != twin.read_bytes():
            numbers.append(f"scan/{table.relative_to(before / 'scan')} differs")
        records += _record_differences(json.loads(table.with_suffix(".json").read_text()),
                                       json.loads(twin.with_suffix(".json").read_text()) if twin.is_file() else {},
                                       f"scan/{table.relative_to(before / 'scan').with_suffix('.json')}")
    return numbers, records


def main(argv: list[str] | None = None) -> int:
    before, after = (Path(a) for a in (argv or sys.argv[1:]))
    numbers, records = compare(before, after)
    distinct = sorted({r.split(": ", 1)[1] for r in records})
    print(f"numbers that differ: {len(numbers)}")
    print("\n".join(f"  {n}" for n in numbers[:50]))
    print(f"record entries that differ: {len(records)} ({len(distinct)} distinct key changes)")
    print("\n".join(f"  {d}" for d in distinct[:50]))
    return 1 if numbers else 0


if __name__ == "__main__":
    sys.exit(main())
