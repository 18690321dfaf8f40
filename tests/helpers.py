"""Small builders shared by package-level tests (no Snakemake)."""

from __future__ import annotations

from pathlib import Path

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.data.preprocess import open_data, preprocess
from layerprobe.data.synthetic import write_dataset
from layerprobe.models.backbones import load_backbone
from layerprobe.models.tiny import openclip as tiny_clip

TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "heads": 2, "mixing": 1.0, "seed": 0}
KEYS = [f"layer_{i:02d}" for i in range(5)]


def tiny_clip_model(tmp: Path, **overrides) -> dict:
    return tiny_config(tmp, **overrides)["models"]["tiny"]


def tiny_config(tmp: Path, training: int = 20, validation: int = 8, **overrides) -> dict:
    """A validated config: model `tiny` (the tiny ViT, built on first use) on the synthetic data
    `tiny_data` writes, chunks of 4 images."""
    weights = tmp / "tiny_vit.pt"
    model = {"kind": "open_clip", "arch": "lp-test-tiny-vit", "pretrained": str(weights), "tiny": dict(TINY),
             "layers": [0, 1, 2, 3, 4], "batch_size": 4, **overrides}
    synthetic = {"training": training, "validation": validation, "height": 40, "width": 48}
    cfg = lp_config.validate({"dataset": {"root": str(tmp / "ADEChallengeData2016"), "synthetic": synthetic},
                              "store": {"chunk_images": 4}, "models": {"tiny": model}})
    if not weights.exists():
        tiny_clip.build(model["arch"], weights, cfg["models"]["tiny"]["tiny"])
    return cfg


def tiny_backbone(tmp: Path):
    model = tiny_clip_model(tmp)
    return model, load_backbone("tiny", model, "cpu")


def tiny_data(tmp: Path, resolution: int = 32, training: int = 20, validation: int = 8):
    root = write_dataset(tmp / "ADEChallengeData2016", training=training, validation=validation, height=40, width=48)
    preprocess(root, tmp / f"{resolution}px.zarr", tmp / f"{resolution}px.json", resolution, {}, chunk_images=4)
    return open_data(tmp / f"{resolution}px.zarr")


def tiny_layout(cfg: dict, data, name: str = "tiny", prompt: str = "none"):
    from layerprobe.features.extract import make_layout

    return make_layout(name, cfg["models"][name], prompt, data, cfg["store"]["chunk_images"],
                       cfg["store"]["shuffle_seed"], lp_fp.store(cfg, name, prompt))


def tiny_feature_store(tmp: Path, training: int, validation: int):
    """A finalized feature store of the tiny ViT (chunks of 4); returns (model, backbone, data, path)."""
    from layerprobe.features.extract import build_store

    cfg = tiny_config(tmp, training, validation)
    model, backbone = cfg["models"]["tiny"], load_backbone("tiny", cfg["models"]["tiny"], "cpu")
    data = tiny_data(tmp, training=training, validation=validation)
    path = tmp / "features.zarr"
    build_store(backbone, data, path, tmp / "features.json", tiny_layout(cfg, data), KEYS, model["batch_size"])
    return model, backbone, data, path
