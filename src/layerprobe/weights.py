"""Model weights staged once, where the network is, into `weights.cache_dir`; jobs load offline.

`fetch` runs in the `fetch_weights` localrule (the login node or the head job): open_clip's own
download into its cache directory (`open_clip.pretrained.download_pretrained`, the code
`create_model(arch, pretrained=tag, cache_dir=...)` calls), and `huggingface_hub.snapshot_download`
for a LLaVA hub id. It records the files and their sizes in a manifest (the rule's output).

Extraction and scan jobs call `go_offline` (HF_HUB_OFFLINE=1: nothing is downloaded, never 14 GB
per job) and `check_cached`, which fails at once, naming the model and the fetch command, when the
cache is missing or partial (a file absent or of another size, an interrupted `.incomplete` blob),
instead of hanging on a network a compute node does not have.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

LLAVA_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # weights, configs, tokenizer
HUB_KINDS = ("llava", "hf_vision")  # loaded by hub id with transformers' from_pretrained


class WeightsNotCached(RuntimeError):
    """A model's weights are not (completely) in the cache an offline job reads."""


def needs_fetch(model: dict[str, Any]) -> bool:
    """Models loaded from the network: hub ids and open_clip tags (not local files or tiny models)."""
    if model.get("tiny") is not None:
        return False
    if model["kind"] in HUB_KINDS:
        return not Path(model["hub_id"]).exists()
    return model["pretrained"] != "none" and not Path(model["pretrained"]).exists()


def go_offline() -> None:
    """No downloads from here on (set before and after huggingface_hub is imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: its flag was read at import time
        constants.HF_HUB_OFFLINE = True


def source_id(model: dict[str, Any]) -> str:
    """One name per download: models sharing a hub id (two LLaVA entries) share one fetch."""
    source = model["hub_id"] if model["kind"] in HUB_KINDS else f"open_clip/{model['arch']}/{model['pretrained']}"
    return source.replace("/", "--").replace(":", "--")


def model_for_source(config: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    for name, model in config["models"].items():
        if needs_fetch(model) and source_id(model) == source:
            return name, model
    raise KeyError(f"no model in the config downloads {source!r}")


def manifest_path(model: dict[str, Any]) -> Path:
    """The fetch_weights rule's output (relative to the Snakemake working directory)."""
    return Path("results/weights") / f"{source_id(model)}.json"


def fetch_command(model: dict[str, Any]) -> str:
    return (f"`snakemake --cores 1 --configfile <your config> {manifest_path(model)}` on a node with network "
            "access (the login node); weights.cache_dir must be on a file system the compute nodes see")


def loader_options(name: str, model: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`load_backbone` keyword arguments for a job: the cache, and offline mode after checking
    the cache is complete. Models with local weights (tiny, a path) need neither."""
    if not needs_fetch(model):
        return {}
    settings = config["weights"]
    if settings["offline"]:
        go_offline()
        check_cached(name, model, manifest_path(model))
    return {"cache_dir": settings["cache_dir"], "offline": settings["offline"]}


def fetch(name: str, model: dict[str, Any], cache_dir: str | Path) -> dict[str, Any]:
    """Download a model's weights into cache_dir with the libraries' own code; return the manifest."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if model["kind"] in HUB_KINDS:  # hf_vision: config, preprocessor_config and safetensors weights
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model["hub_id"], cache_dir=cache_dir, allow_patterns=LLAVA_FILES))
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    else:
        files = [Path(_open_clip_file(model, cache_dir))]
    manifest = {"model": name, "kind": model["kind"], "source": _source(model), "cache_dir": str(cache_dir),
                "files": {str(p.relative_to(cache_dir) if p.is_relative_to(cache_dir) else p): p.stat().st_size
                          for p in files}}
    return manifest


def _source(model: dict[str, Any]) -> str:
    return model["hub_id"] if model["kind"] in HUB_KINDS else f"{model['arch']}:{model['pretrained']}"


def _open_clip_file(model: dict[str, Any], cache_dir: Path) -> str:
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model["arch"], model["pretrained"])
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {model['pretrained']!r} for {model['arch']!r}")
    return download_pretrained(cfg, cache_dir=str(cache_dir))


def check_cached(name: str, model: dict[str, Any], manifest: str | Path) -> None:
    """Every file `fetch` recorded is in the cache with its size, and no download was left half done."""
    manifest_path = Path(manifest)
    if not manifest_path.is_file():
        raise WeightsNotCached(f"models.{name}: no weights manifest {manifest_path}; fetch them first: "
                               f"{fetch_command(model)}")
    manifest = json.loads(manifest_path.read_text())
    cache_dir = Path(manifest["cache_dir"])
    problems = []
    for rel, size in manifest["files"].items():
        path = cache_dir / rel
        if not path.is_file():
            problems.append(f"{path} missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, expected {size}")
    problems += [f"{p} (an interrupted download)" for p in cache_dir.rglob("*.incomplete")]
    if problems:
        raise WeightsNotCached(f"models.{name}: the weights cache {cache_dir} is partial: {'; '.join(problems[:5])}; "
                               f"fetch them again: {fetch_command(model)}")
