"""Bootstrap intervals: exactness of the resampled sums, pairing, and coverage on synthetic probes."""

from __future__ import annotations

import numpy as np
import pytest

from layerprobe.probing import intervals
from layerprobe.probing.metrics import ImageCounts, SegmentationMeter


def _counts(ids, inter, union):
    inter, union = np.asarray(inter), np.asarray(union)
    return ImageCounts(list(ids), inter, union, union.sum(1))


def test_each_resample_is_the_miou_of_its_drawn_images():
    rng = np.random.default_rng(1)
    union = rng.integers(1, 50, (12, 4))
    counts = _counts(range(12), rng.integers(0, 1, (12, 4)) + union // 2, union)
    weights = intervals.resample_weights(12, resamples=5, seed=3)
    assert weights.sum(1).tolist() == [12] * 5
    drawn = np.repeat(np.arange(12), weights[2].astype(int))
    expected = _counts(drawn, counts.intersect[drawn], counts.union[drawn]).miou()
    assert intervals.resampled_mious(counts, weights)[2] == pytest.approx(expected)


def test_paired_difference_pairs_by_image_id_and_needs_the_same_images():
    rng = np.random.default_rng(2)
    union = rng.integers(10, 60, (30, 3))
    a = _counts([f"i{k}" for k in range(30)], union // 2, union)
    b = _counts([f"i{k}" for k in range(30)], union // 2 + (rng.random((30, 3)) < 0.5), union)
    shuffled = b.select([f"i{k}" for k in rng.permutation(30)])
    same = intervals.paired_difference(a, b)
    assert intervals.paired_difference(a, shuffled) == same  # order does not matter, ids do
    assert same.estimate == pytest.approx(b.miou() - a.miou()) and same.low <= same.estimate <= same.high
    assert intervals.paired_difference(a, a) == intervals.Interval(0.0, 0.0, 0.0)
    assert not intervals.paired_difference(a, a).significant
    with pytest.raises(ValueError, match="same images"):
        intervals.paired_difference(a, b.select([f"i{k}" for k in range(29)]))


def test_unpaired_intervals_are_wider_than_the_paired_one():
    """Shared image difficulty cancels in the pairing: the reason it is paired."""
    a, b, _ = _synthetic_pair(np.random.default_rng(5), images=200, delta=0.05)
    paired = intervals.paired_difference(a, b)
    ia, ib = intervals.miou_interval(a), intervals.miou_interval(b)
    assert paired.high - paired.low < 0.8 * min(ia.high - ia.low, ib.high - ib.low)


# --- coverage ---------------------------------------------------------------------------------------

CLASSES = 6


def _images(rng, n, size=16):
    """Label maps with per-image difficulty: a few class regions, some ignore."""
    labels = rng.integers(0, CLASSES, (n, 4, 4)).repeat(size // 4, 1).repeat(size // 4, 2)
    labels[:, :1, :3] = 255
    difficulty = rng.beta(2, 2, n)  # shared by both probes: what pairing cancels
    return labels, difficulty


def _predict(rng, labels, difficulty, signal):
    """A fixed linear probe (identity weights: argmax) on features that carry `signal` x the
    one-hot label, damped by the image's difficulty, plus unit Gaussian noise per channel."""
    onehot = (labels[..., None] == np.arange(CLASSES)).astype(np.float32)
    scale = (signal * (1 - difficulty / 2))[:, None, None, None]
    features = scale * onehot + rng.standard_normal(onehot.shape, dtype=np.float32)
    return features.argmax(-1)


def _meter(pred, labels, ids):
    import torch

    meter = SegmentationMeter(CLASSES, per_image=True)
    meter.update(torch.as_tensor(pred), torch.as_tensor(labels))
    return meter.image_counts(ids)


def _synthetic_pair(rng, images, delta, skill=1.5):
    labels, difficulty = _images(rng, images)
    ids = [str(i) for i in range(images)]
    a = _meter(_predict(rng, labels, difficulty, skill), labels, ids)
    b = _meter(_predict(rng, labels, difficulty, skill + delta), labels, ids)
    return a, b, ids


def _true_difference(delta, skill=1.5, images=20000, seed=12345):
    """The population mIoU difference of the two probes: one very large sample."""
    a, b, _ = _synthetic_pair(np.random.default_rng(seed), images, delta, skill)
    return b.miou() - a.miou()


@pytest.mark.parametrize("delta", [0.15, 0.0])
def test_paired_interval_covers_the_true_difference_and_flags_the_null(delta, record_property):
    """>= 50 seeded replicates of 150 validation images each: B's features carry `delta` more signal
    than A's (0: the null), read by the same fixed linear probe. The paired 95% interval must cover the
    population difference in >= 90% of replicates, and in the null case flag it not significant in >= 90%."""
    import time

    start = time.perf_counter()
    truth = _true_difference(delta)
    replicates, covered, significant = 60, 0, 0
    for seed in range(replicates):
        a, b, _ = _synthetic_pair(np.random.default_rng(seed), images=150, delta=delta)
        interval = intervals.paired_difference(a, b)
        covered += interval.contains(truth)
        significant += interval.significant
    seconds = time.perf_counter() - start
    record_property("coverage", covered / replicates)
    print(f"delta={delta}: true difference {truth:+.4f}, coverage {covered}/{replicates}, "
          f"significant {significant}/{replicates}, {seconds:.1f} s")
    assert covered >= 0.9 * replicates
    if delta == 0.0:
        assert abs(truth) < 0.005
        assert replicates - significant >= 0.9 * replicates
    else:
        assert significant >= 0.9 * replicates  # a real effect of this size is found
