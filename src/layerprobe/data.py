"""Preprocess ADE20K once per resolution into a uint8 Zarr store (see docs/DESIGN.md).

Images: shorter side resized to `resolution` (bicubic), centre crop. Labels: the same geometry
with nearest neighbour, so probes are scored against labels at the model's input resolution.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from . import ade20k
from .progress import progress

log = logging.getLogger("layerprobe.data")
# Images per chunk of the data store: an IO detail of this store only (feature stores have their
# own store.chunk_images), so changing the feature chunking never preprocesses again.
CHUNK_IMAGES = 16


def resize_crop(image: Image.Image, label: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side -> resolution, then centre crop; the label follows with nearest neighbour."""
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.BICUBIC)
    lab = Image.fromarray(label).resize(size, Image.NEAREST)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    box = (left, top, left + resolution, top + resolution)
    return np.asarray(image.crop(box)), np.asarray(lab.crop(box))


def select(samples: list[ade20k.Sample], max_images: int | None) -> list[ade20k.Sample]:
    """The first `max_images` by sorted id: a stable subset for quick runs."""
    return samples if max_images is None else samples[:max_images]


def preprocess(root: str | Path, store_path: str | Path, manifest_path: str | Path, resolution: int,
               max_images: dict[str, int | None], fingerprint: dict[str, Any] | None = None,
               chunk_images: int = CHUNK_IMAGES) -> dict[str, Any]:
    """Write `{split}/images` and `{split}/labels`; the manifest, with the data's fingerprint
    record (`fingerprint.data(...).record()`), is written last (completion)."""
    store_path, manifest_path = Path(store_path), Path(manifest_path)
    manifest_path.unlink(missing_ok=True)
    if store_path.exists():
        shutil.rmtree(store_path)  # a leftover from a failed run is never trusted
    group = zarr.open_group(store_path, mode="w")
    ids: dict[str, list[str]] = {}
    for split in ade20k.SPLITS:
        samples = select(ade20k.list_samples(root, split), max_images.get(split))
        ids[split] = [s.image_id for s in samples]
        _write_split(group, split, samples, resolution, chunk_images)
    group.attrs.update({"resolution": resolution, "class_names": list(ade20k.CLASS_NAMES),
                        **{f"{split}_image_ids": ids[split] for split in ids}})
    manifest = {"store": str(store_path), "resolution": resolution, "dataset": str(root),
                "images": {split: len(v) for split, v in ids.items()}, "fingerprint": fingerprint}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def _write_split(group: zarr.Group, split: str, samples: list[ade20k.Sample], resolution: int, chunk: int) -> None:
    n = len(samples)
    images = group.create_array(f"{split}/images", shape=(n, resolution, resolution, 3), dtype="uint8",
                                chunks=(chunk, resolution, resolution, 3))
    labels = group.create_array(f"{split}/labels", shape=(n, resolution, resolution), dtype="uint8",
                                chunks=(chunk, resolution, resolution), fill_value=ade20k.IGNORE)
    for start in progress(range(0, n, chunk), desc=f"preprocess {split} @{resolution}px", unit="chunk"):
        batch = [resize_crop(*ade20k.read_sample(s), resolution) for s in samples[start:start + chunk]]
        images[start:start + len(batch)] = np.stack([b[0] for b in batch])
        labels[start:start + len(batch)] = np.stack([b[1] for b in batch])


def open_data(store_path: str | Path) -> zarr.Group:
    return zarr.open_group(store_path, mode="r")
