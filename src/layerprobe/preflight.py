"""Checks before any job is queued, in one place: what the workflow's common.smk runs at DAG build.

- The dataset's layout (a real ADE20K root), unless it is a dry run (which needs no data) or the
  root is still to be downloaded (fetch_ade20k checks it once unpacked).
- Tiny models changed by hand since the workflow built them (`models.weights.check_tiny_intact`).
- On a dry run, the plan's one-look cost summary, returned for the caller to print.
Tested without Snakemake (tests/test_preflight.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data.ade20k import DatasetError, check_layout
from .models import weights


class PreflightError(RuntimeError):
    """The config cannot run here; the message names the config key or the file."""


def is_dry_run(argv: list[str], workflow: Any = None) -> bool:
    """Snakemake's dry-run flag: the workflow's own setting where it has one, else the command
    line (`-n`, `--dry-run`, or `n` among combined short flags such as `-np`)."""
    if getattr(workflow, "dryrun", False):
        return True
    flags = [a for a in argv[1:] if a.startswith("-")]
    return any(a in ("--dry-run", "--dryrun") for a in flags) or \
        any("n" in a[1:] for a in flags if not a.startswith("--"))


def preflight(config: dict[str, Any], dry_run: bool, tiny_built: dict[str, str]) -> str | None:
    """Run the checks (PreflightError on a problem); on a dry run return the plan summary.
    `tiny_built`: each tiny model's build record (the build_tiny_model rule's output)."""
    dataset = config["dataset"]
    to_download = dataset["download"] and not Path(dataset["root"]).exists()
    if dataset["synthetic"] is None and not dry_run and not to_download:
        try:
            check_layout(dataset["root"])
        except DatasetError as err:
            raise PreflightError(f"Dataset error (config key dataset.root): {err}") from None
    for name, model in config["models"].items():
        if model.get("tiny") is not None:
            try:
                weights.check_tiny_intact(name, model, tiny_built[name])
            except weights.WeightsChanged as err:
                raise PreflightError(str(err)) from None
    if not dry_run:
        return None
    from .plan import summary

    return summary(config)
