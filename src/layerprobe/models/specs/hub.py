"""A hub model's JSON files (config.json, preprocessor_config.json) without network or weights.

Looked up, in order:
1. a local directory (`hub_id` is a path: tiny models, a converted checkpoint);
2. the weights cache (`weights.cache_dir`), where `fetch_weights` or `layerprobe fetch-configs`
   put the hub snapshot (huggingface_hub's cache layout);
3. the copies pinned in this package (`specs/pinned/<org>--<name>/`), for the models the seed's
   config names and its commented examples, so a dry run of the real config works anywhere.
Anything else fails at DAG build, naming the config key and the command that caches the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .core import UnknownModel
from .memo import note_lookup

PINNED = Path(__file__).with_name("pinned")


def pinned_dir(hub_id: str) -> Path:
    return PINNED / hub_id.replace("/", "--")


def fetch_configs_command() -> str:
    return "`layerprobe fetch-configs --configfile <your config>` on a machine with network access"


def find_json(hub_id: str, filename: str, cache_dir: str | None) -> Path | None:
    path = _find_json(hub_id, filename, cache_dir)
    note_lookup(hub_id, filename, cache_dir, path)  # a remembered spec holds only while this stays
    return path


def _find_json(hub_id: str, filename: str, cache_dir: str | None) -> Path | None:
    local = Path(hub_id)
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    if cache_dir is not None and Path(cache_dir).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    pinned = pinned_dir(hub_id) / filename
    return pinned if pinned.is_file() else None


def read_json(where: str, hub_id: str, filename: str, cache_dir: str | None) -> dict[str, Any]:
    """`where`: the config key naming the model (models.<name>.hub_id), for the error."""
    path = find_json(hub_id, filename, cache_dir)
    if path is None:
        if Path(hub_id).is_dir():
            raise UnknownModel(f"{where}: {hub_id} has no {filename} (not a saved Hugging Face model directory?)")
        looked = [f"the weights cache {cache_dir}" if cache_dir else "no weights cache",
                  f"the pinned configs {pinned_dir(hub_id)}"]
        raise UnknownModel(f"{where}: {filename} of {hub_id!r} is not available offline (looked in "
                           f"{', '.join(looked)}); known hub ids are those whose config is cached or pinned. "
                           f"If {hub_id!r} is right, cache its config with {fetch_configs_command()}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UnknownModel(f"{where}: cannot read {path}: {err}") from None
