"""Bootstrap intervals over validation images: every mIoU, and paired differences of two probes.

mIoU is not a mean over images (intersections and unions are summed over the split first), so
its interval comes from resampling images: each resample draws N images with replacement, sums
their per-class counts (`metrics.ImageCounts`) and takes the mIoU of the sums. A difference of two
probes (two prompts, two layers) is *paired*: both sides are summed over the same resampled images,
so what the images have in common (hard images are hard for both) cancels. Percentile intervals;
a difference whose interval contains 0 is not significant.

What this interval covers: the noise of which validation images were drawn, for fixed probes.
It does not cover the probe's training noise; `probe.seeds` measures that separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import ImageCounts, iou_of, nanmean_last

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0  # fixed: the same results give the same report


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the full sample, not the mean of the resamples
    low: float
    high: float

    def contains(self, value: float = 0.0) -> bool:
        return bool(self.low <= value <= self.high)

    @property
    def significant(self) -> bool:
        """For a difference: its interval excludes 0 (NaN bounds are never significant)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and not self.contains(0.0))

    def record(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) how often each image is drawn in each resample (rows sum to n)."""
    if n == 0:
        return np.zeros((resamples, 0))
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def resampled_mious(counts: ImageCounts, weights: np.ndarray) -> np.ndarray:
    """(resamples,) the mIoU of each resample: summed counts, then IoU per class, then nanmean."""
    intersect = weights @ counts.intersect.astype(np.float64)
    union = weights @ counts.union.astype(np.float64)
    return nanmean_last(iou_of(intersect, union))


def _percentiles(values: np.ndarray, estimate: float, level: float) -> Interval:
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(estimate, float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def miou_interval(counts: ImageCounts, resamples: int = RESAMPLES, seed: int = SEED,
                  level: float = LEVEL) -> Interval:
    """The probe's mIoU with its bootstrap interval over validation images."""
    weights = resample_weights(len(counts), resamples, seed)
    return _percentiles(resampled_mious(counts, weights), counts.miou(), level)


def paired_difference(a: ImageCounts, b: ImageCounts, resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> Interval:
    """mIoU(b) - mIoU(a) with a paired interval: both summed over the same resampled images.

    The two probes must have been scored on the same images (any order); otherwise the pairing
    has no meaning and this raises ValueError naming the difference.
    """
    if sorted(a.ids) != sorted(b.ids):
        only_a, only_b = set(a.ids) - set(b.ids), set(b.ids) - set(a.ids)
        raise ValueError(f"paired difference needs the same images: {len(only_a)} only in the first, "
                         f"{len(only_b)} only in the second")
    b = b.select(a.ids)
    weights = resample_weights(len(a), resamples, seed)
    diff = resampled_mious(b, weights) - resampled_mious(a, weights)
    return _percentiles(diff, b.miou() - a.miou(), level)
