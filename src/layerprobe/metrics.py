"""mIoU and pixel accuracy as mmseg computes them.

Intersections and unions are summed over the whole split, then IoU per class; a class with zero
union is NaN and excluded by the nanmean. Averaging per image or per batch gives other numbers.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = 255


class SegmentationMeter:
    """Accumulates per-class intersection/union/label areas over a split."""

    def __init__(self, num_classes: int = 150, ignore: int = IGNORE) -> None:
        self.num_classes, self.ignore = num_classes, ignore
        self.intersect = torch.zeros(num_classes, dtype=torch.float64)
        self.union = torch.zeros(num_classes, dtype=torch.float64)
        self.label_area = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        keep = label != self.ignore
        pred, label = pred[keep], label[keep]
        c = self.num_classes
        inter = torch.bincount(label[pred == label], minlength=c)[:c].double()
        area_pred = torch.bincount(pred, minlength=c)[:c].double()
        area_label = torch.bincount(label, minlength=c)[:c].double()
        self.intersect += inter
        self.union += area_pred + area_label - inter
        self.label_area += area_label

    def per_class_iou(self) -> np.ndarray:
        union = self.union.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.intersect.numpy() / union, np.nan)

    def miou(self) -> float:
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = float(self.label_area.sum())
        return float(self.intersect.sum()) / total if total else float("nan")

    def state(self) -> dict[str, torch.Tensor]:
        return {"intersect": self.intersect, "union": self.union, "label_area": self.label_area}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.intersect, self.union, self.label_area = (state[k].clone() for k in ("intersect", "union", "label_area"))


def mean_iou(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int = 150) -> tuple[float, float, np.ndarray]:
    """Convenience: (mIoU, pixel accuracy, per-class IoU) over a list of prediction/label maps."""
    meter = SegmentationMeter(num_classes)
    for pred, label in zip(preds, labels):
        meter.update(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(label)))
    return meter.miou(), meter.accuracy(), meter.per_class_iou()
