"""`layerprobe fetch-configs --configfile F [F ...]`: cache the JSON files a hub model's spec is
read from (config.json; preprocessor_config.json for hf_vision and mllm) into `weights.cache_dir`.

The DAG needs every model's depth, width and resolution before any rule runs, so a hub id whose
config is neither pinned (layerprobe/specs/pinned) nor already cached fails at DAG build and names
this command. Run it where the network is (the login node); it reads the YAML without validating
it, since validation is what needs the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import merged_raw, schema_default
from ..models.specs.hub import find_json
from ..models.weights import HUB_KINDS

SPEC_FILES = {"llava": ["config.json"], "hf_vision": ["config.json", "preprocessor_config.json"],
              "mllm": ["config.json", "preprocessor_config.json"]}


def hub_models(paths: list[str]) -> tuple[dict[str, dict[str, Any]], str]:
    """The hub-id models of the merged config files (later files override earlier ones) and the cache."""
    raw = merged_raw(paths)
    models = raw.get("models") or {}
    cache_dir = (raw.get("weights") or {}).get("cache_dir", schema_default("weights.cache_dir"))
    hub = {name: m for name, m in models.items()
           if isinstance(m, dict) and m.get("kind") in HUB_KINDS and m.get("hub_id") and m.get("tiny") is None
           and not Path(m["hub_id"]).exists()}  # tiny models are built locally by a rule
    return hub, cache_dir


def fetch_configs(paths: list[str]) -> list[str]:
    from huggingface_hub import hf_hub_download

    models, cache_dir = hub_models(paths)
    done = []
    for name, model in models.items():
        for filename in SPEC_FILES[model["kind"]]:
            path = hf_hub_download(model["hub_id"], filename, cache_dir=cache_dir)
            assert find_json(model["hub_id"], filename, cache_dir) is not None
            done.append(f"models.{name}: {path}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layerprobe fetch-configs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", required=True)
    args = parser.parse_args(argv)
    for line in fetch_configs(args.configfile) or ["no hub ids to fetch (local or tiny models only)"]:
        print(line)
    return 0
