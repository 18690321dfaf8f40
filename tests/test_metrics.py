import numpy as np
import pytest

from layerprobe.probing.metrics import mean_iou

I = 255


def test_hand_computed_with_ignore_and_absent_class():
    # 3 classes declared; class 2 appears nowhere (neither label nor prediction) -> excluded.
    label = np.array([[0, 0, 1, I]])
    pred = np.array([[0, 1, 1, 0]])  # the ignored pixel's prediction must not count
    miou, acc, iou = mean_iou([pred], [label], num_classes=3)
    # class 0: I=1, U=2 -> 0.5 ; class 1: I=1, U=2 -> 0.5 ; class 2: NaN
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(0.5) and np.isnan(iou[2])
    assert miou == pytest.approx(0.5)
    assert acc == pytest.approx(2 / 3)


def test_sums_over_dataset_not_mean_of_images():
    labels = [np.array([[0, 0, 0, 0]]), np.array([[1, 1, 1, 1]])]
    preds = [np.array([[0, 0, 0, 1]]), np.array([[1, 1, 1, 1]])]
    miou, acc, iou = mean_iou(preds, labels, num_classes=2)
    # dataset sums: class0 I=3 U=4 ; class1 I=4 U=5
    assert iou.tolist() == pytest.approx([0.75, 0.8])
    assert miou == pytest.approx(0.775)
    # the per-image mean would differ: image1 (0.75 + 0)/2, image2 (nan, 0.8 -> 0.8)
    per_image = np.mean([np.nanmean([0.75, 0.0]), 0.8])
    assert miou != pytest.approx(per_image)
    assert acc == pytest.approx(7 / 8)


def test_predicted_but_absent_class_counts_as_zero():
    label = np.array([[0, 0]])
    pred = np.array([[0, 1]])
    miou, _, iou = mean_iou([pred], [label], num_classes=3)
    assert iou[1] == 0.0 and np.isnan(iou[2])
    assert miou == pytest.approx((0.5 + 0.0) / 2)


def test_per_image_counts_sum_to_the_split_counts_and_select_pairs_images():
    import torch

    from layerprobe.probing.metrics import SegmentationMeter

    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (5, 7, 9))
    label[0, :2] = I
    pred = np.where(rng.random(label.shape) < 0.6, label % 6, rng.integers(0, 6, label.shape))
    total, each = SegmentationMeter(6), SegmentationMeter(6, per_image=True)
    for meter in (total, each):
        meter.update(torch.as_tensor(pred[:3]), torch.as_tensor(label[:3]))
        meter.update(torch.as_tensor(pred[3:]), torch.as_tensor(label[3:]))
    counts = each.image_counts([f"img{i}" for i in range(5)])
    assert counts.intersect.sum(0).tolist() == total.intersect.tolist()
    assert counts.union.sum(0).tolist() == total.union.tolist()
    assert counts.miou() == pytest.approx(total.miou()) and each.miou() == pytest.approx(total.miou())
    assert counts.accuracy() == pytest.approx(total.accuracy())
    one = SegmentationMeter(6)
    one.update(torch.as_tensor(pred[2]), torch.as_tensor(label[2]))
    picked = counts.select(["img2", "img0"])
    assert picked.intersect[0].tolist() == one.intersect.tolist() and picked.ids == ["img2", "img0"]
    assert picked.label_pixels[1] == (label[0] != I).sum()


def test_image_counts_round_trip_through_npz(tmp_path):
    from layerprobe.probing.metrics import ImageCounts

    counts = ImageCounts(["a", "b"], np.array([[1, 0], [2, 3]]), np.array([[2, 1], [2, 4]]), np.array([3, 5]))
    counts.save(tmp_path / "c.npz")
    back = ImageCounts.load(tmp_path / "c.npz")
    assert back.ids == ["a", "b"] and back.intersect.tolist() == counts.intersect.tolist()
    assert back.union.tolist() == counts.union.tolist() and back.label_pixels.tolist() == [3, 5]
