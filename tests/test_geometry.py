"""The pad geometry: image and label padded to the model's square and back, whole-image scoring,
and the centre crop left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from layerprobe.data.geometry import (
    PAD_FILL,
    fill_padding,
    pad_box,
    pad_offsets,
    pad_resize,
    padding_mask,
    predict_original,
)
from layerprobe.data.preprocess import OriginalAnnotations, ade20k, open_data, preprocess, resize_crop
from layerprobe.data.synthetic import write_dataset
from layerprobe.probing.metrics import SegmentationMeter
from layerprobe.probing.wholeimage import evaluate, score_image

IGNORE = ade20k.IGNORE


def scene(height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """A non-square image with a known label map: a band along the top, a disc, two halves below,
    an ignored strip; every region has its own colour."""
    yy, xx = np.mgrid[0:height, 0:width]
    label = np.where(xx < width * 0.4, 3, 7).astype(np.uint8)
    label[yy < height * 0.25] = 1
    label[(yy - height * 0.6) ** 2 + (xx - width * 0.7) ** 2 < (min(height, width) * 0.2) ** 2] = 5
    label[:, int(width * 0.9):int(width * 0.9) + 2] = IGNORE
    colours = np.random.default_rng(0).integers(0, 256, size=(256, 3)).astype(np.uint8)
    return Image.fromarray(colours[label]), label


def one_hot_logits(label: np.ndarray, grid: int, classes: int = 8) -> torch.Tensor:
    """(C, grid, grid): each cell votes for the majority class of its pixels (ignore: no vote)."""
    size = label.shape[0]
    cells = label.reshape(grid, size // grid, grid, size // grid).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    votes = np.stack([(cells == c).sum(-1) for c in range(classes)])  # (C, grid, grid)
    winner = votes.argmax(0)
    logits = np.zeros((classes, grid, grid), np.float32)
    np.put_along_axis(logits, winner[None], (votes.sum(0) > 0)[None].astype(np.float32), axis=0)
    return torch.from_numpy(logits)


def near_boundary(label: np.ndarray, distance: int) -> np.ndarray:
    """Pixels within `distance` (Chebyshev) of a pixel of another value."""
    change = np.zeros(label.shape, bool)
    change[1:] |= label[1:] != label[:-1]
    change[:-1] |= label[1:] != label[:-1]
    change[:, 1:] |= label[:, 1:] != label[:, :-1]
    change[:, :-1] |= label[:, 1:] != label[:, :-1]
    padded = np.pad(change, distance)
    near = np.zeros(label.shape, bool)
    for dy in range(2 * distance + 1):
        for dx in range(2 * distance + 1):
            near |= padded[dy:dy + label.shape[0], dx:dx + label.shape[1]]
    return near


def back_to_original(logits: torch.Tensor, box, shape, resolution: int) -> np.ndarray:
    pred = np.empty(shape, np.int64)
    for start, rows in predict_original(logits, box, shape, resolution, max_elements=8 * shape[1] * 7):
        pred[start:start + len(rows)] = rows.numpy()
    return pred


def agreement_away_from_boundaries(pred: np.ndarray, label: np.ndarray, distance: int) -> float:
    far = ~near_boundary(label, distance) & (label != IGNORE)
    return float((pred[far] == label[far]).mean())


@pytest.mark.parametrize("height, width", [(90, 150), (150, 90)])
def test_round_trip_at_pixel_resolution_is_exact(height, width):
    """Logits one-hot per pixel of the padded label at 2x the original scale: mapped back, every
    labelled pixel gets its own class (no offset, no transposition, no scale error)."""
    image, label = scene(height, width)
    _, padded, box = pad_resize(image, label, 300)
    pred = back_to_original(one_hot_logits(padded, 300), box, label.shape, 300)
    labelled = label != IGNORE
    assert np.array_equal(pred[labelled], label[labelled])


@pytest.mark.parametrize("height, width, resolution, grid", [(96, 128, 64, 8), (128, 80, 64, 8), (60, 100, 48, 24)])
def test_round_trip_on_the_token_grid_aligns_away_from_boundaries(height, width, resolution, grid):
    """Criterion: the pixels farther than one token cell (in original pixels, rounded up) from
    any class boundary all get their class back, and >= 99% of those farther than half a cell.
    Forgetting the padding offset (box at the top-left corner) must break it."""
    image, label = scene(height, width)
    _, padded, box = pad_resize(image, label, resolution)
    logits = one_hot_logits(padded, grid)
    cell = int(np.ceil(max(height, width) / grid))
    pred = back_to_original(logits, box, label.shape, resolution)
    assert agreement_away_from_boundaries(pred, label, cell) == 1.0
    assert agreement_away_from_boundaries(pred, label, int(np.ceil(cell / 2))) >= 0.99
    unpadded = back_to_original(logits, (0.0, 0.0, box[2], box[3]), label.shape, resolution)
    assert agreement_away_from_boundaries(unpadded, label, cell) < 0.95


@pytest.mark.parametrize("height, width, resolution, grid", [(96, 128, 64, 8), (131, 57, 48, 6), (40, 40, 32, 4)])
def test_inverse_mapping_is_upsampling_the_square_and_cutting_the_padding(height, width, resolution, grid):
    """predict_original equals F.interpolate to the original-scale square max(H, W)^2 (bilinear,
    align_corners=False), argmax, padding cut away: the protocol the docs state."""
    logits = torch.randn(11, grid, grid, generator=torch.Generator().manual_seed(height))
    side, (top, left) = max(height, width), pad_offsets(height, width)
    square = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    expected = square.argmax(0)[top:top + height, left:left + width].numpy()
    got = back_to_original(logits, pad_box(height, width, resolution), (height, width), resolution)
    assert np.array_equal(got, expected)


def test_pad_resize_puts_the_content_in_its_box_and_ignores_the_padding():
    image, label = scene(60, 100)
    padded_image, padded_label, box = pad_resize(image, label, 50)
    assert box == pytest.approx((10.0, 0.0, 30.0, 50.0))  # 100 px square: 20 px above, at 0.5 scale
    assert (padded_label[:10] == IGNORE).all() and (padded_label[40:] == IGNORE).all()
    assert (padded_image[:8] == PAD_FILL).all() and (padded_image[42:] == PAD_FILL).all()  # bicubic: 2 px reach
    assert np.array_equal(padded_label[10:40], np.asarray(Image.fromarray(label).resize((50, 30), Image.NEAREST)))


def test_padding_mask_covers_only_pixels_wholly_outside_the_box():
    mask = padding_mask(torch.tensor([[2.5, 0.0, 3.0, 8.0], [0.0, 1.0, 8.0, 6.0]]), 8)
    assert mask[0, :, 0].tolist() == [True, True, False, False, False, False, True, True]  # rows 2 and 5 cut
    assert not mask[0, 2:6].any()
    assert mask[1, 0].tolist() == [True, False, False, False, False, False, False, True]
    pixels = torch.ones(2, 3, 8, 8)
    filled = fill_padding(pixels, torch.tensor([[2.5, 0.0, 3.0, 8.0], [0.0, 1.0, 8.0, 6.0]]))
    assert torch.equal(filled == 0, mask[:, None].expand_as(filled))
    assert fill_padding(pixels, None) is pixels


def test_backbone_features_do_not_depend_on_the_padding_bytes(tmp_path):
    """The data store is model-independent: whatever the padding holds, a backbone sees its own
    mean colour there, so tokens are identical; without boxes they differ."""
    from tests.helpers import tiny_backbone

    _, backbone = tiny_backbone(tmp_path)
    images, boxes = [], []
    for height, width in ((20, 32), (32, 12)):
        image, label = scene(height, width)
        padded, _, box = pad_resize(image, label, 32)
        images.append(padded)
        boxes.append(box)
    images, boxes = torch.from_numpy(np.stack(images)), torch.tensor(boxes)
    noisy = images.clone()
    outside = padding_mask(boxes, 32)
    noisy[outside] = torch.randint(0, 256, (int(outside.sum()), 3), dtype=torch.uint8)
    keys = ["layer_02"]
    clean_tokens, _ = backbone.extract(images, None, keys, boxes=boxes)
    noisy_tokens, _ = backbone.extract(noisy, None, keys, boxes=boxes)
    assert torch.equal(clean_tokens["layer_02"], noisy_tokens["layer_02"])
    assert not torch.equal(backbone.extract(images, None, keys)[0]["layer_02"],
                           backbone.extract(noisy, None, keys)[0]["layer_02"])


# --- whole-image scoring ----------------------------------------------------------------------

def test_whole_image_score_equals_the_meter_on_full_resolution_arrays():
    """Known predictions (the reference path: upsample to the square, cut) scored by
    SegmentationMeter on full-size arrays give exactly the counts of the chunked scorer; the
    per-image counts sum to the totals."""
    rng = np.random.default_rng(1)
    shapes = [(96, 128), (70, 41), (64, 64)]
    resolution, grid, classes = 32, 4, 150
    logits = [torch.randn(classes, grid, grid, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    labels = [rng.integers(0, 6, size=shape).astype(np.uint8) for shape in shapes]
    for label in labels:
        label[rng.random(label.shape) < 0.1] = IGNORE
    reference = SegmentationMeter(classes)
    scored = SegmentationMeter(classes, per_image=True)
    for item, label, (height, width) in zip(logits, labels, shapes):
        side, (top, left) = max(height, width), pad_offsets(height, width)
        up = F.interpolate(item[None], size=(side, side), mode="bilinear", align_corners=False)
        pred = up[0].argmax(0)[top:top + height, left:left + width]
        reference.update(pred[None], torch.from_numpy(label)[None])
        scored.add_image(*score_image(item, label, pad_box(height, width, resolution), resolution, classes,
                                      max_elements=classes * width * 3))
    for key in ("intersect", "union", "label_area"):
        assert torch.equal(scored.state()[key], reference.state()[key])
    assert scored.miou() == reference.miou() and scored.accuracy() == reference.accuracy()
    counts = scored.image_counts(["a", "b", "c"])
    assert np.array_equal(counts.intersect.sum(0), reference.intersect.numpy().astype(np.int64))
    assert np.array_equal(counts.union.sum(0), reference.union.numpy().astype(np.int64))
    assert counts.label_pixels.sum() == reference.label_area.sum()
    assert counts.miou() == pytest.approx(reference.miou())


@pytest.fixture(scope="module")
def pad_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pad")
    root = write_dataset(tmp / "ADEChallengeData2016", training=6, validation=5, height=40, width=56)
    preprocess(root, tmp / "32px_pad.zarr", tmp / "32px_pad.json", 32, {}, chunk_images=4, geometry="pad")
    return root, open_data(tmp / "32px_pad.zarr")


def test_pad_data_store_keeps_boxes_and_original_annotations(pad_store):
    root, data = pad_store
    originals = OriginalAnnotations(data)
    samples = ade20k.list_samples(root, "validation")
    assert data.attrs["geometry"] == "pad" and len(originals) == len(samples) == 5
    for row, sample in enumerate(samples):
        image, label = ade20k.read_sample(sample)
        assert np.array_equal(originals.label(row), label)  # whole annotation, original size
        assert originals.box(row) == pytest.approx(pad_box(image.height, image.width, 32))
        expected_image, expected_label, _ = pad_resize(image, label, 32)
        assert np.array_equal(data["validation/images"][row], expected_image)
        assert np.array_equal(data["validation/labels"][row], expected_label)
    assert data["training/boxes"].shape == (6, 4) and "training/original_labels" not in data


def test_evaluate_scores_store_rows_against_their_own_images_and_refuses_another_store(pad_store):
    _, data = pad_store
    originals = OriginalAnnotations(data)
    ids = list(data.attrs["validation_image_ids"])
    order = [3, 0, 4, 1, 2]  # a feature store's shuffled order: row r holds data-store image order[r]
    store_ids = [ids[i] for i in order]
    logits = torch.randn(5, 150, 4, 4, generator=torch.Generator().manual_seed(0))
    batches = [(logits[:2], np.array([0, 1])), (logits[2:], np.array([2, 3, 4]))]
    meter, counted = evaluate(batches, originals, order, store_ids, ids)
    assert counted == store_ids
    expected = SegmentationMeter(150)
    for row in range(5):
        expected.add(*(torch.as_tensor(c, dtype=torch.float64) for c in
                       score_image(logits[row], originals.label(order[row]), originals.box(order[row]), 32, 150)))
    assert torch.equal(meter.intersect, expected.intersect) and torch.equal(meter.union, expected.union)
    with pytest.raises(ValueError, match="not made from this data store"):
        evaluate(batches, originals, list(range(5)), store_ids, ids)


# --- the centre crop, unchanged ------------------------------------------------------------------

def test_center_crop_store_is_what_it_was(tmp_path):
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=3, validation=2, height=40, width=56)
    manifest = preprocess(root, tmp_path / "32px.zarr", tmp_path / "32px.json", 32, {}, chunk_images=4)
    data = open_data(tmp_path / "32px.zarr")
    assert "geometry" not in data.attrs and "geometry" not in manifest
    assert sorted(data["validation"].array_keys()) == ["images", "labels"]
    for row, sample in enumerate(ade20k.list_samples(root, "validation")):
        image, label = resize_crop(*ade20k.read_sample(sample), 32)
        assert np.array_equal(data["validation/images"][row], image)
        assert np.array_equal(data["validation/labels"][row], label)
