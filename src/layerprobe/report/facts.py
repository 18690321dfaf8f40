"""Run facts for reproducibility: package versions, the git commit, dates, host, and what each
multimodal LLM's image tokens could attend to."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ["layerprobe", "torch", "transformers", "open_clip_torch", "zarr", "snakemake", "numpy", "pandas",
            "matplotlib"]


def package_versions(names: list[str] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(*candidates: Path) -> str:
    """HEAD of the first candidate inside a git checkout, '+ uncommitted changes' when dirty."""
    for where in candidates:
        try:
            head = _git(where, "rev-parse", "HEAD")
        except (OSError, subprocess.CalledProcessError):
            continue
        dirty = _git(where, "status", "--porcelain", "--untracked-files=no")
        return head + (" + uncommitted changes" if dirty else "")
    return "not a git checkout"


def _git(where: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=True,
                          timeout=20).stdout.strip()


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def results_dates(metrics: list[Path]) -> str:
    """First and last probe result written (file modification times)."""
    times = [p.stat().st_mtime for p in metrics if p.is_file()]
    if not times:
        return "no probe results"
    return f"{_stamp(min(times))} … {_stamp(max(times))}"


def software_facts(recorded: dict[str, dict[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """(the versions the results were made with, per package, and warnings): a package whose
    results were made with several versions, or with another than the report's."""
    from ..provenance import differences, versions

    now = versions()
    found: dict[str, dict[str, int]] = {}
    for record in recorded.values():
        for package, version in record.items():
            found.setdefault(package, {}).setdefault(version, 0)
            found[package][version] += 1
    facts = [(f"{package} (results)", ", ".join(f"{v} ({n})" for v, n in sorted(counts.items())))
             for package, counts in sorted(found.items())]
    warnings = [f"results were made with {package} " + " and ".join(f"{v} ({len(where)}, e.g. {where[0]})"
                                                                    for v, where in sorted(seen.items()))
                for package, seen in sorted(differences(recorded).items())]
    warnings += [f"results were made with {package} {only}, this report with {now[package]}"
                 for package, counts in sorted(found.items()) if len(counts) == 1
                 for only in counts if package in now and only != now[package]]
    return facts, warnings


def run_facts(metrics: list[Path], workdir: Path) -> list[tuple[str, str]]:
    """When, where and with which code: `metrics` are the probes' metrics.json files."""
    source = Path(__file__).resolve().parents[4]  # the repo root when installed in development mode
    facts = [("report built", _stamp(dt.datetime.now(dt.timezone.utc).timestamp())),
             ("probe results written", results_dates(metrics)),
             ("git commit", git_commit(workdir, source)),
             ("host", f"{platform.node()} ({platform.system()} {platform.machine()})"),
             ("python", platform.python_version())]
    facts += [(name, version) for name, version in package_versions().items()]
    return facts


ATTENTION = {"causal": "causal: image tokens see only what comes before them",
             "prefix_lm": "prefix-LM: image tokens and the prompt see each other both ways (token_type_ids)",
             "image_block_bidirectional": "causal text; each image block sees itself both ways (token_type_ids)"}


def attention_facts(config: dict[str, Any]) -> list[tuple[str, str]]:
    """One row per LLM-kind model: its image tokens' attention and where its prompt sits."""
    from .. import config as lp_config
    from ..config_mllm import prompt_after_image
    from ..models.specs import LLM_KINDS

    rows = []
    for name, model in config["models"].items():
        spec = lp_config.spec(config, name)
        if spec.kind not in LLM_KINDS:
            continue
        where = "the family's chat template" if model.get("prompt_format") is None else "prompt_format"
        place = "after" if prompt_after_image(model) else "before"
        family = f" ({spec.family})" if spec.family else ""
        rows.append((f"attention, {name}{family}",
                     f"{ATTENTION[spec.image_attention]}; prompt {place} the image ({where})"))
    return rows
