"""Small builders shared by package-level tests (no Snakemake)."""

from __future__ import annotations

from pathlib import Path

from layerprobe import config as lp_config
from layerprobe.backbones import load_backbone, tiny_clip
from layerprobe.data import open_data, preprocess
from layerprobe.synthetic import write_dataset

TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "heads": 2, "mixing": 1.0, "seed": 0}


def tiny_clip_model(tmp: Path, **overrides) -> dict:
    weights = tmp / "tiny_vit.pt"
    model = {"kind": "open_clip", "arch": "lp-test-tiny-vit", "pretrained": str(weights), "tiny": dict(TINY),
             "layers": [0, 1, 2, 3, 4], "batch_size": 4, **overrides}
    cfg = lp_config.validate({"dataset": {"root": str(tmp)}, "models": {"tiny": model}})
    if not weights.exists():
        tiny_clip.build(model["arch"], weights, cfg["models"]["tiny"]["tiny"])
    return cfg["models"]["tiny"]


def tiny_backbone(tmp: Path):
    model = tiny_clip_model(tmp)
    return model, load_backbone("tiny", model, "cpu")


def tiny_data(tmp: Path, resolution: int = 32, training: int = 20, validation: int = 8):
    root = write_dataset(tmp / "ADEChallengeData2016", training=training, validation=validation, height=40, width=48)
    preprocess(root, tmp / f"{resolution}px.zarr", tmp / f"{resolution}px.json", resolution, {}, 4)
    return open_data(tmp / f"{resolution}px.zarr")


def tiny_feature_store(tmp: Path, training: int, validation: int):
    """A finalized feature store of the tiny ViT (chunks of 4); returns (model, backbone, data, path)."""
    from layerprobe import store
    from layerprobe.extract import run_part

    model, backbone = tiny_backbone(tmp)
    data = tiny_data(tmp, training=training, validation=validation)
    path = tmp / "features.zarr"
    run_part("tiny", model, "none", backbone, data, path, 0, 1, 4, 0)
    store.finalize(path, tmp / "features.json")
    return model, backbone, data, path
