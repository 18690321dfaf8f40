"""Whole-image scoring of a probe trained on a pad data store, as mmseg scores ADE20K.

Each validation image's grid logits go back through its content box to its original H x W
(`geometry.predict_original`: bilinear, align_corners=False, in row blocks) and are scored
against the whole original annotation. Counts are added image by image (`add_image`), so the
per-image counts serve `layerprobe.probing.intervals` as those at model resolution do.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..data.geometry import predict_original
from ..data.preprocess import OriginalAnnotations
from .metrics import IGNORE, SegmentationMeter


def count_block(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                ignore: int = IGNORE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (intersection, predicted area, label area) of one block of pixels, ignore skipped."""
    keep = label != ignore
    pred, label = pred[keep].long(), label[keep].long()
    known = label < num_classes  # a stray label value counts as labelled area of no class, as in the meter

    def count(values: torch.Tensor) -> np.ndarray:
        return torch.bincount(values, minlength=num_classes)[:num_classes].cpu().numpy().astype(np.int64)

    return count(label[known & (pred == label)]), count(pred), count(label[known])


def score_image(logits: torch.Tensor, label: np.ndarray, box: tuple[float, float, float, float], resolution: int,
                num_classes: int, ignore: int = IGNORE,
                max_elements: int = 1 << 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, union, label area) per class of one image: grid logits (C, g, g) against its
    original annotation (H, W), at most `max_elements` upsampled logits alive at a time."""
    inter, area_pred, area_label = (np.zeros(num_classes, np.int64) for _ in range(3))
    target = torch.from_numpy(np.ascontiguousarray(label)).to(logits.device)
    for start, pred in predict_original(logits, box, label.shape, resolution, max_elements):
        block = count_block(pred, target[start:start + len(pred)], num_classes, ignore)
        inter, area_pred, area_label = inter + block[0], area_pred + block[1], area_label + block[2]
    return inter, area_pred + area_label - inter, area_label


def evaluate(batches: Iterable[tuple[torch.Tensor, np.ndarray]], originals: OriginalAnnotations,
             order: list[int], store_ids: list[str], data_ids: list[str],
             num_classes: int = 150) -> tuple[SegmentationMeter, list[str]]:
    """Score every (grid logits (B, C, g, g), feature-store rows) batch on the original annotations.

    `order[row]` is the data-store row of a feature-store row (the store attrs' validation_order);
    the ids on both sides must agree, so a feature store is never scored on another data store.
    Returns the per-image meter and the ids in the order they were counted.
    """
    meter, counted = SegmentationMeter(num_classes, per_image=True), []
    for logits, rows in batches:
        for item, row in zip(logits, np.asarray(rows).tolist()):
            data_row = int(order[row])
            if data_ids[data_row] != store_ids[row]:
                raise ValueError(f"feature-store row {row} is image {store_ids[row]}, but data-store row {data_row} "
                                 f"is {data_ids[data_row]}: the feature store was not made from this data store")
            meter.add_image(*score_image(item, originals.label(data_row), originals.box(data_row),
                                         originals.resolution, num_classes))
            counted.append(store_ids[row])
    return meter, counted
