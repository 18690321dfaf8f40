"""Measured vs requested resources per job: the Snakemake benchmark TSVs (`benchmark:` of every
rule, `<results>/benchmarks/{rule}/{wildcards}.tsv`), read from the folder the report rule names.

Requested values come from `layerprobe.resources`, the one source the rules ask from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..plan.estimates import requested

BENCHMARK_COLUMNS = ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load",
                     "cpu_time"]
MODEL_RULES = ("build_tiny_model", "prepare_store", "extract", "finalize_store", "probe", "scan")
COLUMNS = (["rule", "job", "model", "mem_mb", "runtime_min", "gpus", "cpus"]
           + [c for c in BENCHMARK_COLUMNS if c != "h:m:s"])


def job_model(rule: str, relative: Path, config: dict[str, Any]) -> str | None:
    """`benchmarks/{rule}/{model}/...tsv` or `{model}.tsv` / `{model}.partN.tsv`: the model is
    the first path part, for the rules with a `model` wildcard."""
    first = relative.parts[0].split(".")[0] if relative.parts else ""
    return first if rule in MODEL_RULES and first in config.get("models", {}) else None


def read_benchmark(path: Path) -> dict[str, float]:
    """One Snakemake benchmark TSV; the last row is the job's (`repeat()` would add rows).
    "NA" (a job too short for a memory sample) becomes NaN."""
    table = pd.read_csv(path, sep="\t")
    if table.empty:
        return {}
    row = table.iloc[-1]
    return {c: float(pd.to_numeric(row[c], errors="coerce")) for c in table.columns if c != "h:m:s"}


def read_benchmarks(folder: Path | None, config: dict[str, Any]) -> pd.DataFrame:
    """One row per benchmarked job: rule, job name, requested mem_mb/runtime_min/gpus, measured
    `s` (wall seconds), `max_rss` (MB, Snakemake's unit), `cpu_time` ... (NaN when missing)."""
    rows = []
    base = Path(folder) if folder is not None else None
    for path in sorted(base.rglob("*.tsv")) if base is not None and base.is_dir() else []:
        rel = path.relative_to(base)
        rule, inner = rel.parts[0], Path(*rel.parts[1:]) if len(rel.parts) > 1 else Path(rel.stem)
        model = job_model(rule, inner, config)
        try:
            wanted = requested(rule, config, model)
        except (KeyError, ValueError):  # a rule this config does not know: measured values only
            wanted = {}
        rows.append({"rule": rule, "job": inner.with_suffix("").as_posix(), "model": model, **wanted,
                     **read_benchmark(path)})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)
