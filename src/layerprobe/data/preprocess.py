"""Preprocess ADE20K once per resolution and geometry into a uint8 Zarr store (docs/DESIGN.md).

center_crop: shorter side resized to `resolution` (bicubic), centre crop. Labels: the same
geometry with nearest neighbour, so probes are scored against labels at the model's input
resolution. pad (layerprobe.data.geometry): padded to a square and resized, with each image's content
box; the validation split also keeps every original annotation, for whole-image scoring.
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

from ..progress import progress
from ..provenance import versions
from . import ade20k
from .geometry import pad_resize

log = logging.getLogger("layerprobe.data")
# Images per chunk of the data store: an IO detail of this store only (feature stores have their
# own store.chunk_images), so changing the feature chunking never preprocesses again.
CHUNK_IMAGES = 16
# Original annotations are one flat uint8 array per split (ragged sizes); small chunks, so scoring
# one image in the probe's (shuffled) order decodes little more than that image.
ORIGINAL_CHUNK_BYTES = 1 << 18
GEOMETRIES = ("center_crop", "pad")


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
               chunk_images: int = CHUNK_IMAGES, geometry: str = "center_crop") -> dict[str, Any]:
    """Write `{split}/images` and `{split}/labels` (pad: also `{split}/boxes` and the validation
    originals); the manifest, with the data's fingerprint record (`fingerprint.data(...).record()`),
    is written last (completion)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    store_path, manifest_path = Path(store_path), Path(manifest_path)
    manifest_path.unlink(missing_ok=True)
    if store_path.exists():
        shutil.rmtree(store_path)  # a leftover from a failed run is never trusted
    group = zarr.open_group(store_path, mode="w")
    ids: dict[str, list[str]] = {}
    for split in ade20k.SPLITS:
        samples = select(ade20k.list_samples(root, split), max_images.get(split))
        ids[split] = [s.image_id for s in samples]
        if geometry == "pad":
            _write_split_pad(group, split, samples, resolution, chunk_images)
        else:
            _write_split(group, split, samples, resolution, chunk_images)
    extra = {"geometry": geometry} if geometry != "center_crop" else {}  # centre-crop stores as they were
    group.attrs.update({"resolution": resolution, "class_names": list(ade20k.CLASS_NAMES),
                        **{f"{split}_image_ids": ids[split] for split in ids}, **extra})
    manifest = {"store": str(store_path), "resolution": resolution, "dataset": str(root), **extra,
                "images": {split: len(v) for split, v in ids.items()}, "fingerprint": fingerprint,
                "versions": versions()}
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


def _write_split_pad(group: zarr.Group, split: str, samples: list[ade20k.Sample], resolution: int,
                     chunk: int) -> None:
    """Padded images and labels, content boxes, and (validation) the original annotations."""
    n = len(samples)
    images = group.create_array(f"{split}/images", shape=(n, resolution, resolution, 3), dtype="uint8",
                                chunks=(chunk, resolution, resolution, 3))
    labels = group.create_array(f"{split}/labels", shape=(n, resolution, resolution), dtype="uint8",
                                chunks=(chunk, resolution, resolution), fill_value=ade20k.IGNORE)
    boxes = group.create_array(f"{split}/boxes", shape=(n, 4), dtype="float64", chunks=(max(n, 1), 4))
    originals = _create_originals(group, split, samples) if split == "validation" else None
    box_rows = []
    for start in progress(range(0, n, chunk), desc=f"preprocess {split} @{resolution}px pad", unit="chunk"):
        read = [ade20k.read_sample(s) for s in samples[start:start + chunk]]
        batch = [pad_resize(image, label, resolution) for image, label in read]
        images[start:start + len(batch)] = np.stack([b[0] for b in batch])
        labels[start:start + len(batch)] = np.stack([b[1] for b in batch])
        box_rows += [b[2] for b in batch]
        if originals is not None:
            originals.write(start, [label for _, label in read])
    boxes[:] = np.asarray(box_rows, np.float64).reshape(n, 4)


class _OriginalsWriter:
    """Writes annotations at their original size into the flat `{split}/original_labels`."""

    def __init__(self, flat: Any, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    def write(self, start: int, labels: list[np.ndarray]) -> None:
        first, last = int(self.offsets[start]), int(self.offsets[start + len(labels)])
        if last > first:
            self.flat[first:last] = np.concatenate([label.reshape(-1) for label in labels])


def _create_originals(group: zarr.Group, split: str, samples: list[ade20k.Sample]) -> _OriginalsWriter:
    """Offsets (N + 1) and shapes (N, 2) from the annotation headers, then the empty flat array."""
    shapes = np.array([_annotation_shape(s) for s in samples], np.int64).reshape(len(samples), 2)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
    group.create_array(f"{split}/original_shapes", data=shapes, chunks=(max(len(samples), 1), 2))
    group.create_array(f"{split}/original_offsets", data=offsets, chunks=(len(offsets),))
    flat = group.create_array(f"{split}/original_labels", shape=(int(offsets[-1]),), dtype="uint8",
                              chunks=(ORIGINAL_CHUNK_BYTES,), fill_value=ade20k.IGNORE)
    return _OriginalsWriter(flat, offsets)


def _annotation_shape(sample: ade20k.Sample) -> tuple[int, int]:
    """(H, W) from the PNG header, without decoding (read_sample checks it against the image)."""
    with Image.open(sample.annotation) as img:
        return img.height, img.width


class OriginalAnnotations:
    """The validation annotations of a pad data store at their original H x W, by data-store row."""

    def __init__(self, data: zarr.Group, split: str = "validation") -> None:
        if f"{split}/original_labels" not in data:
            raise ValueError(f"{data.store}: no original annotations ({split}/original_labels); "
                             "only a pad data store keeps them")
        self.flat = data[f"{split}/original_labels"]
        self.offsets = np.asarray(data[f"{split}/original_offsets"][:])
        self.shapes = np.asarray(data[f"{split}/original_shapes"][:])
        self.boxes = np.asarray(data[f"{split}/boxes"][:])
        self.resolution = int(data.attrs["resolution"])

    def __len__(self) -> int:
        return len(self.shapes)

    def label(self, row: int) -> np.ndarray:
        height, width = (int(v) for v in self.shapes[row])
        return np.asarray(self.flat[int(self.offsets[row]):int(self.offsets[row + 1])]).reshape(height, width)

    def box(self, row: int) -> tuple[float, float, float, float]:
        return tuple(float(v) for v in self.boxes[row])


def open_data(store_path: str | Path) -> zarr.Group:
    return zarr.open_group(store_path, mode="r")
