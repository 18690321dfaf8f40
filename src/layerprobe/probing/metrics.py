"""mIoU and pixel accuracy as mmseg computes them.

Intersections and unions are summed over the whole split, then IoU per class; a class with zero
union is NaN and excluded by the nanmean. Averaging per image or per batch gives other numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE = 255


class SegmentationMeter:
    """Accumulates per-class intersection/union/label areas over a split.

    With `per_image=True` it also keeps every image's own counts (`ImageCounts`), from which
    `layerprobe.probing.intervals` resamples images for bootstrap intervals.
    """

    def __init__(self, num_classes: int = 150, ignore: int = IGNORE, per_image: bool = False) -> None:
        self.num_classes, self.ignore = num_classes, ignore
        self.intersect = torch.zeros(num_classes, dtype=torch.float64)
        self.union = torch.zeros(num_classes, dtype=torch.float64)
        self.label_area = torch.zeros(num_classes, dtype=torch.float64)
        self.images: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = [] if per_image else None

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred and label (B, H, W) (or any shape with images first when per_image)."""
        if self.images is not None:
            self._update_per_image(pred, label)
            return
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        keep = label != self.ignore
        pred, label = pred[keep], label[keep]
        c = self.num_classes
        inter = torch.bincount(label[pred == label], minlength=c)[:c].double()
        area_pred = torch.bincount(pred, minlength=c)[:c].double()
        area_label = torch.bincount(label, minlength=c)[:c].double()
        self.add(inter, area_pred + area_label - inter, area_label)

    def _update_per_image(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        # One bincount per kind over (image, class): the same counts as `update`, kept per image.
        b, c = len(label), self.num_classes
        pred, label = pred.reshape(b, -1).long().cpu(), label.reshape(b, -1).long().cpu()
        image = torch.arange(b).view(b, 1).expand_as(label)
        keep = label != self.ignore
        hit = keep & (pred == label)
        size = b * c

        def count(mask: torch.Tensor, cls: torch.Tensor) -> np.ndarray:
            valid = mask & (cls < c)
            return torch.bincount((image * c + cls)[valid], minlength=size)[:size].view(b, c).numpy()

        inter, area_pred, area_label = count(hit, label), count(keep, pred), count(keep, label)
        self.add_images(inter, area_pred + area_label - inter, area_label)

    def add_image(self, intersect: np.ndarray, union: np.ndarray, label_area: np.ndarray) -> None:
        """One image's per-class counts (C,), e.g. from a scorer that works image by image."""
        self.add_images(*(np.asarray(x)[None] for x in (intersect, union, label_area)))

    def add_images(self, intersect: np.ndarray, union: np.ndarray, label_area: np.ndarray) -> None:
        """Per-class counts of a batch of images (B, C): kept per image (per_image=True) and summed."""
        if self.images is not None:
            self.images.append(tuple(np.asarray(x, np.int64) for x in (intersect, union, label_area)))
        self.add(*(torch.as_tensor(np.asarray(x).sum(0), dtype=torch.float64) for x in (intersect, union, label_area)))

    def add(self, intersect: torch.Tensor, union: torch.Tensor, label_area: torch.Tensor) -> None:
        self.intersect += intersect
        self.union += union
        self.label_area += label_area

    def image_counts(self, ids: list[str]) -> "ImageCounts":
        """The kept per-image counts, in update order, named by `ids`."""
        if self.images is None:
            raise ValueError("this meter was made without per_image=True")
        inter, union, area = (np.concatenate([batch[k] for batch in self.images]) if self.images
                              else np.zeros((0, self.num_classes), np.int64) for k in range(3))
        if len(ids) != len(inter):
            raise ValueError(f"{len(ids)} image ids for {len(inter)} counted images")
        return ImageCounts(list(ids), inter, union, area.sum(1))

    def per_class_iou(self) -> np.ndarray:
        return iou_of(self.intersect.numpy(), self.union.numpy())

    def miou(self) -> float:
        return miou_of(self.intersect.numpy(), self.union.numpy())

    def accuracy(self) -> float:
        total = float(self.label_area.sum())
        return float(self.intersect.sum()) / total if total else float("nan")

    def state(self) -> dict[str, torch.Tensor]:
        return {"intersect": self.intersect, "union": self.union, "label_area": self.label_area}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.intersect, self.union, self.label_area = (state[k].clone() for k in ("intersect", "union", "label_area"))


def mean_iou(preds: list[np.ndarray], labels: list[np.ndarray],
             num_classes: int = 150) -> tuple[float, float, np.ndarray]:
    """Convenience: (mIoU, pixel accuracy, per-class IoU) over a list of prediction/label maps."""
    meter = SegmentationMeter(num_classes)
    for pred, label in zip(preds, labels):
        meter.update(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(label)))
    return meter.miou(), meter.accuracy(), meter.per_class_iou()


@dataclass
class ImageCounts:
    """Per validation image: per-class intersection and union (N, C) and labelled pixels (N,).

    Sums over any multiset of images give that sample's mIoU exactly as `SegmentationMeter` does
    (dataset-level sums, then IoU per class): what the bootstrap resamples.
    """

    ids: list[str]
    intersect: np.ndarray
    union: np.ndarray
    label_pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def miou(self) -> float:
        return miou_of(self.intersect.sum(0), self.union.sum(0))

    def accuracy(self) -> float:
        total = self.label_pixels.sum()
        return float(self.intersect.sum() / total) if total else float("nan")

    def select(self, ids: list[str]) -> "ImageCounts":
        """These images, in this order (pairs two probes' counts image by image)."""
        where = {image: i for i, image in enumerate(self.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not counted, e.g. {missing[:3]}")
        rows = np.array([where[i] for i in ids], dtype=np.int64)
        return ImageCounts(list(ids), self.intersect[rows], self.union[rows], self.label_pixels[rows])

    def save(self, path: str | Path) -> None:
        """npz with int32 counts (a 2,000-image split: ~2.4 MB before compression)."""
        np.savez_compressed(path, ids=np.array(self.ids), intersect=self.intersect.astype(np.int32),
                            union=self.union.astype(np.int32), label_pixels=self.label_pixels.astype(np.int64))

    @classmethod
    def load(cls, path: str | Path) -> "ImageCounts":
        with np.load(path) as f:
            return cls([str(i) for i in f["ids"]], f["intersect"].astype(np.int64), f["union"].astype(np.int64),
                       f["label_pixels"].astype(np.int64))


def iou_of(intersect: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-class IoU of summed counts (..., C); NaN where a class has zero union (absent from both
    prediction and label), so it is excluded from the mean, as mmseg does."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersect / np.where(union > 0, union, 1), np.nan)


def nanmean_last(iou: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries; NaN where there are none (no warning)."""
    present = np.isfinite(iou).sum(-1)
    total = np.where(np.isfinite(iou), iou, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, total / np.maximum(present, 1), np.nan)


def miou_of(intersect: np.ndarray, union: np.ndarray) -> float:
    """mIoU of summed counts (C,)."""
    return float(nanmean_last(iou_of(intersect, union)))
