"""A synthetic dataset in the exact ADE20K layout, for the demo and the tests.

Each scene is a few regions (a Voronoi partition); each region takes one class from a fixed
subset of real ADE20K ids, and a class has its own colour and stripe texture, so a linear probe
on random-weight features can separate them. A thin band of label 0 ("other") is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .ade20k import SPLITS

# Visually distinct ADE20K ids (1-based as in the PNGs): wall, sky, floor, tree, road, grass,
# person, car, water, mountain, building, table.
SCENE_CLASSES = (1, 3, 4, 5, 7, 10, 13, 21, 22, 17, 2, 16)
PREFIX = {"training": "ADE_train_", "validation": "ADE_val_"}


def class_styles(seed: int, classes: int) -> dict[int, tuple[np.ndarray, float, float]]:
    """Per class: RGB colour, stripe frequency and stripe angle (fixed by the seed)."""
    rng = np.random.default_rng(seed + 7919)
    hues = np.linspace(0, 1, classes, endpoint=False)
    styles = {}
    for k, ade_id in enumerate(SCENE_CLASSES[:classes]):
        colour = np.array(_hsv_to_rgb(hues[k], 0.7, 0.55 + 0.35 * (k % 2))) * 255
        styles[ade_id] = (colour, 0.15 + 0.1 * (k % 4), rng.uniform(0, np.pi))
    return styles


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def make_scene(rng: np.random.Generator, height: int, width: int, styles: dict) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its raw ADE annotation (H, W) uint8 (0 = other)."""
    ids = np.array(list(styles))
    regions = int(rng.integers(2, 5))
    centres = rng.uniform([0, 0], [height, width], size=(regions, 2))
    region_class = rng.choice(ids, size=regions, replace=False)
    yy, xx = np.mgrid[0:height, 0:width]
    dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    order = np.sort(dist, axis=-1)
    nearest = np.argmin(dist, axis=-1)
    label = region_class[nearest].astype(np.uint8)
    label[np.sqrt(order[..., 1]) - np.sqrt(order[..., 0]) < 1.0] = 0  # boundary band: "other"
    image = np.zeros((height, width, 3), np.float32)
    for ade_id, (colour, freq, angle) in styles.items():
        mask = label == ade_id
        if mask.any():
            stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            image[mask] = colour + 40 * stripes[mask, None]
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_dataset(root: str | Path, *, seed: int = 0, training: int = 64, validation: int = 24,
                  height: int = 96, width: int = 128, classes: int = 8) -> Path:
    """Write ADEChallengeData2016-style images (JPEG) and annotations (PNG) under root."""
    root = Path(root)
    styles = class_styles(seed, classes)
    for split, count in zip(SPLITS, (training, validation)):
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = make_scene(rng, height, width, styles)
            stem = f"{PREFIX[split]}{i + 1:08d}"
            Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
    return root
