"""Model weights: their identity in the fingerprints, staged once where the network is, loaded offline.

Identity (`identity`, part of every store and scan fingerprint): weights replaced under the same
name must never leave old features standing.
- a hub id: its commit. `models.<name>.revision` pins one; otherwise the commit the weights
  cache's ref (`refs/main`) points at, or, before the first fetch, the one the hub reports
  (one small request at DAG build). Jobs load exactly that commit.
- a local directory (`hub_id`) or weights file (`pretrained`): a sha256 of its files' contents,
  cached by size, mtime and inode as the dataset digest is.
- an open_clip tag: the hub repo's commit (open_clip downloads from the hub when it can), else
  the download URL (OpenAI's embed the file's sha256).
- a `tiny` model: its `tiny` block (already in the fingerprint); the workflow builds it, and a
  built model changed by hand is refused (`check_tiny_intact`).

`fetch` runs in the `fetch_weights` localrule (the login node or the head job): open_clip's own
download into its cache directory (`open_clip.pretrained.download_pretrained`, the code
`create_model(arch, pretrained=tag, cache_dir=...)` calls), and `huggingface_hub.snapshot_download`
for a hub id (kinds llava, hf_vision and mllm). It records the files and their sizes in a manifest (the rule's output).

Extraction and scan jobs call `go_offline` (HF_HUB_OFFLINE=1: nothing is downloaded, never 14 GB
per job) and `check_cached`, which fails at once, naming the model and the fetch command, when the
cache is missing or partial (a file absent or of another size, an interrupted `.incomplete` blob),
instead of hanging on a network a compute node does not have.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # weights, configs, tokenizer
HUB_KINDS = ("llava", "hf_vision", "mllm")  # loaded from a Hugging Face hub id (or a local directory)


COMMIT = re.compile(r"^[0-9a-f]{40}$")
UNRESOLVED = "unresolved"  # a hub commit not cached and not reachable (a dry run offline)


class WeightsNotCached(RuntimeError):
    """A model's weights are not (completely) in the cache an offline job reads."""


class WeightsChanged(RuntimeError):
    """Weights differ from what the workflow built or fetched (a file replaced by hand, a moved ref)."""


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------

def identity(name: str, model: dict[str, Any], cache_dir: str | None) -> dict[str, str]:
    """{"models.<name>.weights": what decides the weights' bytes} (empty for tiny and random models)."""
    if model.get("tiny") is not None:
        return {}
    key = f"models.{name}.weights"
    if model["kind"] in HUB_KINDS:
        hub_id = model["hub_id"]
        if Path(hub_id).is_dir():
            return {key: f"local sha256:{local_digest(hub_id)}"}
        return {key: f"{hub_id}@{resolve_commit(hub_id, model.get('revision'), cache_dir) or UNRESOLVED}"}
    pretrained = model["pretrained"]
    if pretrained == "none":
        return {}
    if not needs_fetch(model) or os.sep in pretrained:  # a weights file
        return {key: f"file sha256:{local_digest(pretrained, _open_clip_config(model))}"}
    source = _open_clip_source(model)
    if "hf_hub" in source:
        repo = _hub_repo(source["hf_hub"])
        return {key: f"{repo}@{resolve_commit(repo, None, cache_dir) or UNRESOLVED}"}
    return {key: source.get("url", f"open_clip {model['arch']}:{pretrained}")}


def commit_of(identity_value: str) -> str | None:
    """The commit a hub identity names, None for a local digest, a URL or an unresolved one."""
    commit = identity_value.rpartition("@")[2]
    return commit if COMMIT.match(commit) else None


_COMMITS: dict[tuple[str, str, str | None], str | None] = {}


def resolve_commit(repo: str, revision: str | None, cache_dir: str | None) -> str | None:
    """The commit `revision` (default main) of a hub repo means here: a pinned commit as is, else
    the weights cache's ref, else what the hub says (None offline or unreachable)."""
    if revision and COMMIT.match(revision):
        return revision
    ref = revision or "main"
    memo = (repo, ref, cache_dir)
    if memo in _COMMITS:
        return _COMMITS[memo]
    commit = _cached_ref(repo, ref, cache_dir)
    if commit is None and not _offline():
        commit = _hub_commit(repo, ref)
    _COMMITS[memo] = commit
    return commit


def forget_commits() -> None:
    """Drop memoized commits (a long-lived process whose cache moved; tests)."""
    _COMMITS.clear()


def _cached_ref(repo: str, ref: str, cache_dir: str | None) -> str | None:
    if cache_dir is None:
        return None
    from huggingface_hub.file_download import repo_folder_name

    path = Path(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / ref
    try:
        commit = path.read_text().strip()
    except OSError:
        return None
    return commit if COMMIT.match(commit) else None


def _offline() -> bool:
    constants = sys.modules.get("huggingface_hub.constants")
    flag = getattr(constants, "HF_HUB_OFFLINE", False) if constants is not None else False
    return bool(flag) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_commit(repo: str, ref: str) -> str | None:
    """One metadata request, before the first fetch, so that the DAG plans with the commit the
    fetch will download (it fails, naming both, if the hub moves in between)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo, revision=ref, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline, a firewall, a typo: the fetch job reports it
        return None


def _open_clip_source(model: dict[str, Any]) -> dict[str, str]:
    from .specs.openclip import pretrained_source

    return pretrained_source(model["arch"], model["pretrained"])


def _hub_repo(hf_hub: str) -> str:
    """open_clip's `hf_hub` is 'org/repo/' or 'org/repo/file': the repo id."""
    return "/".join(hf_hub.strip("/").split("/")[:2])


def _open_clip_config(model: dict[str, Any]) -> list[Path]:
    """An open_clip model config stored beside a weights file (`<stem>.config/<arch>.json`)."""
    from .tiny.openclip import config_path

    path = config_path(model["pretrained"]) / f"{model['arch']}.json"
    return [path] if path.is_file() else []


def weight_files(path: str | Path, extra: list[Path] | None = None) -> list[Path]:
    """The files that make a local model: a weights file, or every file of a saved directory
    (hidden ones, e.g. huggingface_hub's `.cache`, left out)."""
    path = Path(path)
    if path.is_file():
        return [path, *(extra or [])]
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def local_digest(path: str | Path, extra: list[Path] | None = None) -> str:
    """sha256 over (relative name, content sha256) of a local model's files; "missing" if none.
    Per-file digests are cached by size, mtime and inode (`digest.DigestCache`)."""
    from ..data.digest import CACHE, DigestCache

    files = weight_files(path, extra)
    if not files:
        return "missing"
    cache, root = DigestCache(CACHE), Path(path)
    total = hashlib.sha256()
    for f in files:
        name = f.relative_to(root) if root.is_dir() else f.name
        total.update(f"{name}\t{cache.digest(f)}\n".encode())
    cache.save()
    return total.hexdigest()[:16]


def check_tiny_intact(name: str, model: dict[str, Any], built: str | Path) -> None:
    """A tiny model is the workflow's own (its `tiny` block is its identity): its files must be what
    build_tiny_model wrote, as recorded in `built`. Not yet built: nothing to check."""
    try:
        recorded = json.loads(Path(built).read_text()).get("digest")
    except (OSError, ValueError):
        return
    path = model["hub_id"] if model["kind"] in HUB_KINDS else model["pretrained"]
    extra = [] if model["kind"] in HUB_KINDS else _open_clip_config(model)
    if recorded is not None and local_digest(path, extra) != recorded:
        raise WeightsChanged(f"models.{name}: {path} changed since build_tiny_model made it from models.{name}.tiny "
                             f"(recorded in {built}); a tiny model is the workflow's own. To use other weights, drop "
                             f"the tiny block and point the model at your files (their content is then part of "
                             f"the fingerprints); to rebuild, delete {path} and {built}")


def tiny_digest(model: dict[str, Any]) -> str:
    """What build_tiny_model records of the files it wrote."""
    path = model["hub_id"] if model["kind"] in HUB_KINDS else model["pretrained"]
    return local_digest(path, [] if model["kind"] in HUB_KINDS else _open_clip_config(model))


# --------------------------------------------------------------------------------------------
# Staging
# --------------------------------------------------------------------------------------------


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


def fetch_command(manifest: str | Path) -> str:
    return (f"`snakemake --cores 1 --configfile <your config> {manifest}` on a node with network "
            "access (the login node); weights.cache_dir must be on a file system the compute nodes see")


def loader_options(name: str, model: dict[str, Any], config: dict[str, Any],
                   manifest: str | Path | None = None) -> dict[str, Any]:
    """`load_backbone` keyword arguments for a job: the cache, offline mode after checking the
    cache is complete (`manifest`: the fetch_weights rule's output), and (hub ids) the exact
    commit the fingerprint names. Models with local weights (tiny, a path) need none of it."""
    if not needs_fetch(model):
        return {}
    settings = config["weights"]
    if settings["offline"]:
        go_offline()
        if manifest is None:
            raise WeightsNotCached(f"models.{name}: offline jobs need the weights manifest of fetch_weights as input")
        check_cached(name, model, manifest, identity(name, model, settings["cache_dir"]))
    options = {"cache_dir": settings["cache_dir"], "offline": settings["offline"]}
    if model["kind"] in HUB_KINDS:
        commit = commit_of(identity(name, model, settings["cache_dir"]).get(f"models.{name}.weights", ""))
        options["revision"] = commit or model.get("revision") or "main"
    return options


def fetch(name: str, model: dict[str, Any], cache_dir: str | Path, planned: dict[str, str] | None = None
          ) -> dict[str, Any]:
    """Download a model's weights into cache_dir with the libraries' own code; return the manifest
    (files and sizes, and the commit of a hub download). `planned` is the identity the DAG was built
    with: a hub that moved since is an error naming both commits, never features of another commit."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if model["kind"] in HUB_KINDS:
        from huggingface_hub import snapshot_download

        revision = model.get("revision") or "main"  # a branch name writes its ref; a commit is taken as is
        folder = Path(snapshot_download(model["hub_id"], revision=revision, cache_dir=cache_dir,
                                        allow_patterns=HUB_FILES))
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        commit: str | None = folder.name
    else:
        files = [Path(_open_clip_file(model, cache_dir))]
        commit = _snapshot_commit(files[0])
    planned_commit = commit_of(next(iter((planned or {}).values()), ""))
    if planned_commit is not None and commit is not None and commit != planned_commit:
        raise WeightsChanged(f"models.{name}: the workflow was planned with {_source(model)} at commit "
                             f"{planned_commit}, "
                             f"but the download gave commit {commit} (the hub moved in between); run snakemake again "
                             f"to plan with it, or pin models.{name}.revision: {planned_commit}")
    manifest = {"model": name, "kind": model["kind"], "source": _source(model), "cache_dir": str(cache_dir),
                **({"commit": commit} if commit else {}),
                "files": {str(p.relative_to(cache_dir) if p.is_relative_to(cache_dir) else p): p.stat().st_size
                          for p in files}}
    return manifest


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a file in huggingface_hub's cache layout (.../snapshots/<commit>/...)."""
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        commit = parts[parts.index("snapshots") + 1]
        return commit if COMMIT.match(commit) else None
    return None


def _source(model: dict[str, Any]) -> str:
    return model["hub_id"] if model["kind"] in HUB_KINDS else f"{model['arch']}:{model['pretrained']}"


def _open_clip_file(model: dict[str, Any], cache_dir: Path) -> str:
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model["arch"], model["pretrained"])
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {model['pretrained']!r} for {model['arch']!r}")
    return download_pretrained(cfg, cache_dir=str(cache_dir))


def check_cached(name: str, model: dict[str, Any], manifest: str | Path,
                 expected: dict[str, str] | None = None) -> None:
    """Every file `fetch` recorded is in the cache with its size, no download was left half done,
    and the fetched commit is the one the fingerprint (`expected`, `identity`) names."""
    manifest_path = Path(manifest)
    if not manifest_path.is_file():
        raise WeightsNotCached(f"models.{name}: no weights manifest {manifest_path}; fetch them first: "
                               f"{fetch_command(manifest_path)}")
    manifest = json.loads(manifest_path.read_text())
    wanted = commit_of(next(iter((expected or {}).values()), ""))
    if wanted is not None and manifest.get("commit") not in (None, wanted):
        raise WeightsNotCached(f"models.{name}: {manifest_path} records commit {manifest['commit']}, the config "
                               f"resolves to {wanted}; fetch again: {fetch_command(manifest_path)}")
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
                               f"fetch them again: {fetch_command(manifest_path)}")
