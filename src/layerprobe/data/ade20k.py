"""The ADE20K (SceneParsing, ADEChallengeData2016) layout, labels and class names.

Annotation PNGs hold 0..150; mmseg's `reduce_zero_label`: 0 ("other") -> 255 (ignored),
k -> k-1, giving classes 0..149.

Images are read as mmseg reads them: with their EXIF orientation applied (mmcv's default
`color_type='color'`, like OpenCV's default decode; PIL's `Image.open` alone ignores it).
Annotations are read unchanged (mmseg's `'unchanged'` flag applies no orientation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("layerprobe.ade20k")
EXIF_ORIENTATION = 0x0112

SPLITS = ("training", "validation")
IGNORE = 255
NUM_CLASSES = 150

CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(CLASS_NAMES) == NUM_CLASSES


class DatasetError(ValueError):
    """A problem with the dataset on disk; the message names the file or directory."""


@dataclass(frozen=True)
class Sample:
    image_id: str
    image: Path
    annotation: Path


def reduce_zero_label(raw: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
    """ADE annotation values 0..150 -> 255 (ignore), 0..149."""
    raw = np.asarray(raw)
    if raw.size and int(raw.max()) > NUM_CLASSES:
        raise DatasetError(f"{source}: label value {int(raw.max())} > {NUM_CLASSES} (ADE20K has 150 classes)")
    out = raw.astype(np.int16) - 1
    out[raw == 0] = IGNORE
    return out.astype(np.uint8)


def split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    return root / "images" / split, root / "annotations" / split


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """Image/annotation pairs of a split, sorted by id; errors name the missing path."""
    root = Path(root)
    image_dir, ann_dir = split_dirs(root, split)
    for directory in (image_dir, ann_dir):
        if not directory.is_dir():
            raise DatasetError(f"{directory}: missing (expected the ADEChallengeData2016 layout "
                               "images/{training,validation} and annotations/{training,validation})")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise DatasetError(f"{image_dir}: empty split (no images)")
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:  # X.jpg and X.png: two samples with one id and one annotation
            raise DatasetError(f"{seen[image.stem]} and {image}: two images with the id {image.stem!r}; "
                               "keep one of them")
        seen[image.stem] = image
    samples = []
    for image in images:
        annotation = ann_dir / f"{image.stem}.png"
        if not annotation.is_file():
            raise DatasetError(f"{annotation}: missing annotation for image {image}")
        samples.append(Sample(image.stem, image, annotation))
    return samples


def check_layout(root: str | Path) -> dict[str, int]:
    """Fail early (at DAG build) on a dataset whose structure is wrong; returns split sizes."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist (config key dataset.root)")
    return {split: len(list_samples(root, split)) for split in SPLITS}


def read_image(path: Path) -> Image.Image:
    """RGB, with the EXIF orientation applied (as mmseg loads images); every rotated file is logged."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
            rgb = upright.convert("RGB")
    except Exception as err:  # PIL raises many types for broken files
        raise DatasetError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    if orientation not in (None, 1):
        log.info("%s: EXIF orientation %s applied (%dx%d -> %dx%d), as mmseg does", path, orientation,
                 img.width, img.height, rgb.width, rgb.height)
    return rgb


def read_label(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            raw = np.asarray(img)
    except Exception as err:
        raise DatasetError(f"{path}: cannot read annotation ({type(err).__name__}: {err})") from None
    if raw.ndim != 2:
        raise DatasetError(f"{path}: annotation must be single-channel, got shape {raw.shape}")
    return reduce_zero_label(raw, path)


def read_sample(sample: Sample) -> tuple[Image.Image, np.ndarray]:
    image, label = read_image(sample.image), read_label(sample.annotation)
    if (image.height, image.width) != label.shape:
        rotated = _exif_orientation(sample.image) not in (None, 1)
        raise DatasetError(f"{sample.annotation}: size {label.shape[::-1]} differs from image {sample.image} "
                           f"size {(image.width, image.height)}"
                           + (f" after applying its EXIF orientation {_exif_orientation(sample.image)} (as mmseg "
                              "does): the annotation was drawn on the unrotated image, or the tag is wrong"
                              if rotated else ""))
    return image, label


def _exif_orientation(path: Path) -> int | None:
    try:
        with Image.open(path) as img:
            return img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - only for an error message
        return None
