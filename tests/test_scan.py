"""Layer scan: the streaming ridge solution, the token targets, the fast upsampled argmax, the
mIoU bookkeeping, the held-out choice of lambda (validation never chooses) and an end-to-end scan
where an informative layer must beat a noise layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import zarr

from layerprobe.models.backbones.base import Backbone
from layerprobe.probing import upsample as ups
from layerprobe.probing.metrics import SegmentationMeter
from layerprobe.scan import agreement as scan_agreement
from layerprobe.scan import cost as scan_cost
from layerprobe.scan import ridge
from layerprobe.scan import run as scan

from .helpers import tiny_backbone, tiny_data

# ---------------------------------------------------------------------------- ridge statistics

def _ridge_problem(seed: int = 0, n: int = 240, d: int = 10, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with a large common offset (as LLM residual streams have) and soft targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, d, dtype=torch.float64)
    x = x + 100.0  # the shift in RidgeStats must keep the centred Gram accurate despite this
    logits = x @ torch.randn(d, c, generator=g, dtype=torch.float64)
    return x, torch.softmax(logits, 1)


def _direct_ridge(x: torch.Tensor, y: torch.Tensor, absolute: float) -> tuple[torch.Tensor, torch.Tensor]:
    """min ||[X 1][W; b] - Y||^2 + absolute ||W||^2 (bias unpenalised) by least squares."""
    n, d = x.shape
    a = torch.cat([torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1),
                   torch.cat([math.sqrt(absolute) * torch.eye(d, dtype=x.dtype), torch.zeros(d, 1, dtype=x.dtype)], 1)])
    b = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    solution = torch.linalg.lstsq(a, b).solution
    return solution[:d], solution[d]


def test_closed_form_matches_least_squares_over_batches() -> None:
    x, y = _ridge_problem()
    stats = ridge.RidgeStats(x.shape[1], y.shape[1])
    for xb, yb in zip(x.split(70), y.split(70)):  # 4 uneven batches
        stats.update(xb.float(), yb.float())
    lambdas = [1e-3, 0.1, 1.0, 30.0]
    weights, bias = stats.solve(lambdas)
    assert weights.shape == (4, 10, 5) and bias.shape == (4, 5)
    xf = x.float().double()  # the statistics see fp32 features: compare on the same data
    centred = xf - xf.mean(0)
    scale = float(torch.trace(centred.T @ centred)) / x.shape[1]
    assert stats.lambda_scale() == pytest.approx(scale, rel=1e-5)
    for i, lam in enumerate(lambdas):
        w, b = _direct_ridge(xf, y, lam * scale)
        assert torch.allclose(weights[i], w, rtol=1e-3, atol=1e-6), lam
        # The offset of 100 amplifies bias errors: compare predictions instead.
        assert torch.allclose(xf @ weights[i] + bias[i], xf @ w + b, atol=1e-5), lam


def test_update_with_class_subset_equals_full_targets() -> None:
    x, y = _ridge_problem(1)
    y[:, 2] = 0.0  # a class absent from the data
    full, subset = ridge.RidgeStats(10, 5), ridge.RidgeStats(10, 5)
    full.update(x.float(), y.float())
    classes = torch.tensor([0, 1, 3, 4])
    subset.update(x.float(), y.float()[:, classes], classes)
    assert torch.equal(full.xty, subset.xty) and torch.equal(full.sum_y, subset.sum_y)


def test_stats_bytes_and_groups() -> None:
    stats = ridge.RidgeStats(12, 7)
    stats.update(torch.randn(5, 12), torch.rand(5, 7))
    assert stats.nbytes() == scan_cost.stats_bytes([12], 7)
    dims = {"layer_00": 100, "layer_01": 100, "layer_02": 100}
    one = scan_cost.stats_bytes([100])
    assert scan_cost.plan_groups(list(dims), dims, None) == [list(dims)]
    assert scan_cost.plan_groups(list(dims), dims, 2 * one) == [["layer_00", "layer_01"], ["layer_02"]]
    assert scan_cost.plan_groups(list(dims), dims, 1) == [["layer_00"], ["layer_01"], ["layer_02"]]
    # LLaVA-1.5-7B, 33 LLM layers at 4096: the figure quoted in docs/BENCHMARKS.md.
    assert scan_cost.stats_bytes([4096] * 33) / 2**30 == pytest.approx(4.28, abs=0.01)


# ---------------------------------------------------------------------------- token targets

def test_token_label_distribution() -> None:
    labels = np.array([[[0, 0, 1, 1],
                        [1, 255, 1, 1],
                        [255, 255, 2, 200],  # 200 >= num_classes: dropped like ignore
                        [255, 255, 2, 2]]], dtype=np.uint8)
    y, mask = ridge.token_label_distribution(labels, grid=2, num_classes=3)
    assert y.shape == (1, 4, 3) and mask.tolist() == [[True, True, False, True]]
    assert torch.allclose(y[0, 0], torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(y[0, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(y[0, 2], torch.zeros(3))  # all-ignore patch
    assert torch.allclose(y[0, 3], torch.tensor([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------- scoring

def _reference_argmax(logits_last: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    logits = logits_last.permute(0, 3, 1, 2).contiguous()
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


@pytest.mark.parametrize("cell_fraction", [0.0, 0.5, math.inf])  # all items plain / mixed / all cells
@pytest.mark.parametrize(("grid", "size"), [(4, (32, 32)), (6, (48, 48)), (5, (35, 35)), (4, (30, 34))])
def test_upsample_argmax_matches_interpolate(grid: int, size: tuple[int, int], cell_fraction: float) -> None:
    g = torch.Generator().manual_seed(grid)
    cases = {
        "dense": torch.randn(12, grid, grid, 20, generator=g),
        # A few strong classes and exact ties at zero, like the ridge logits of unseen classes.
        "sparse": torch.cat([torch.rand(12, grid, grid, 4, generator=g) - 0.5, torch.zeros(12, grid, grid, 16)], -1),
        "ties": torch.zeros(12, grid, grid, 20),
    }
    upsample = ups.UpsampleArgmax(grid, size, cell_fraction=cell_fraction)
    for name, logits in cases.items():
        got, want = upsample(logits), _reference_argmax(logits, size)
        # Equal up to float rounding at exact near-ties (none expected at these sizes).
        assert (got == want).float().mean() > 0.9999, name
    assert torch.equal(upsample(cases["ties"]), torch.zeros(12, *size, dtype=torch.long))


def test_upsample_argmax_mixed_paths() -> None:
    """Near-flat dense items take the plain kernel, blocky ones the cell path, in one call."""
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 4, 4, 20, generator=g)
    blocky = torch.zeros(6, 4, 4, 20)
    blocky[..., 3] = 1.0
    blocky[:, :2, :2, 7] = 2.0
    logits = torch.cat([dense, blocky])
    upsample = ups.UpsampleArgmax(4, (32, 32), cell_fraction=0.05)
    count = upsample.candidates(upsample.corners(logits)).sum(-1).view(12, -1)
    work = (count * (count > 1)).sum(1) * upsample.pixels.shape[1]
    assert (work > 0.05 * 20 * 32 * 32).tolist() == [True] * 6 + [False] * 6
    assert (upsample(logits) == _reference_argmax(logits, (32, 32))).float().mean() > 0.9999


@pytest.mark.parametrize("cell_fraction", [0.0, 0.5, math.inf])
def test_cell_counting_equals_pixel_counting(cell_fraction: float) -> None:
    """Counting single-class cells whole gives the meters exactly what the pixels would."""
    g = torch.Generator().manual_seed(3)
    lambdas, images, grid, size = 3, 4, 4, (32, 28)
    blocky = torch.randn(lambdas * images, grid, grid, 5, generator=g) * 3  # many single-class cells
    logits = torch.cat([blocky, torch.randn(lambdas * images, grid, grid, 3, generator=g)], -1)
    classes = torch.tensor([0, 2, 3, 7, 8, 9, 20, 149])  # the head's class ids
    labels = torch.randint(0, 10, (images, *size), generator=g).to(torch.uint8)
    labels[:, :5] = 255
    labels[0, 10, :4] = 200  # neither a class nor ignore
    upsample = ups.UpsampleArgmax(grid, size, cell_fraction=cell_fraction)
    fast = [SegmentationMeter() for _ in range(lambdas)]
    ups.count_sparse(fast, upsample.sparse(logits), classes, ups.CellLabels(labels, upsample, 150, 255))
    dense = classes[upsample(logits)].view(lambdas, images, *size)
    for meter, pred in zip(fast, dense):
        slow = SegmentationMeter()
        slow.update(pred, labels)
        assert all(torch.equal(meter.state()[k], slow.state()[k]) for k in slow.state())


# ---------------------------------------------------------------------------- end to end

NUM = 6  # classes of the fake dataset
GRID, PATCH = 4, 4


class FakeBackbone(Backbone):
    """layer_01 encodes the patch's class (decoded from the red channel) linearly; layer_00 is a
    projection of the green channel, which is random and independent of the labels. Features are
    a function of the image only, so any batching gives the same tokens."""

    name, image_size, grid, has_cls = "fake", GRID * PATCH, GRID, False

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.projection = torch.randn(NUM, 12, generator=g)
        self.green = torch.randn(PATCH * PATCH, 12, generator=g) / 255
        self.calls: list[tuple[int, tuple[str, ...], list[str] | None]] = []

    def dims(self) -> dict[str, int]:
        return {"layer_00": 12, "layer_01": 12}

    def extract(self, images: torch.Tensor, prompts: list[str] | None,
                keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        self.check_keys(keys)
        self.calls.append((len(images), tuple(keys), prompts))
        b = len(images)
        patches = images.float().view(b, GRID, PATCH, GRID, PATCH, 3).permute(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, GRID * GRID, PATCH * PATCH, 3)
        onehot = F.one_hot((patches[..., 0].mean(-1) / 40).round().long().clamp(0, NUM - 1), NUM).float()
        noise = patches[..., 1] @ self.green
        out = {"layer_01": onehot @ self.projection + 0.01 * noise, "layer_00": noise}
        return {k: out[k] for k in keys}, {}


def _fake_store(path: Path, counts: dict[str, int], class_p: list[float] | None = None) -> zarr.Group:
    """A data store as preprocess writes it: patch-uniform classes (uniform, or drawn with
    probabilities `class_p`), the class in the red channel."""
    rng = np.random.default_rng(0)
    group = zarr.open_group(path, mode="w")
    side = GRID * PATCH
    for split, n in counts.items():
        shape = (n, GRID, GRID)
        classes = rng.integers(0, NUM, size=shape) if class_p is None else rng.choice(NUM, size=shape, p=class_p)
        labels = classes.repeat(PATCH, 1).repeat(PATCH, 2).astype(np.uint8)
        images = np.zeros((n, side, side, 3), np.uint8)
        images[..., 0] = labels * 40
        images[..., 1] = rng.integers(0, 255, size=(n, side, side))
        labels[:, 0, :3] = 255  # some ignore pixels
        labels[0, :PATCH, :PATCH] = 255  # one all-ignore patch
        group.create_array(f"{split}/images", data=images, chunks=(4, side, side, 3))
        group.create_array(f"{split}/labels", data=labels, chunks=(4, side, side))
    return group


def _copy_store(data: zarr.Group, path: Path, **replace: np.ndarray) -> zarr.Group:
    """A copy of a data store with some arrays replaced, e.g. `validation_labels=...`."""
    group = zarr.open_group(path, mode="w")
    for split in ("training", "validation"):
        for name in ("images", "labels"):
            source = data[f"{split}/{name}"]
            group.create_array(f"{split}/{name}", data=replace.get(f"{split}_{name}", source[:]), chunks=source.chunks)
    return group


def _naive_miou(backbone: Backbone, data: zarr.Group, key: str, weight: torch.Tensor, bias: torch.Tensor,
                split: str = "validation", rows: np.ndarray | None = None) -> float:
    """The probes' definition, spelled out: logits -> bilinear upsample -> argmax -> meter."""
    meter = SegmentationMeter(scan.NUM_CLASSES)
    images, labels = data[f"{split}/images"][:], data[f"{split}/labels"][:]
    if rows is not None:
        images, labels = images[rows], labels[rows]
    tokens, _ = backbone.extract(torch.from_numpy(images), None, [key])
    logits = (tokens[key].double() @ weight + bias).float()
    logits = logits.view(len(images), GRID, GRID, -1).permute(0, 3, 1, 2)
    pred = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False).argmax(1)
    meter.update(pred, torch.from_numpy(labels))
    return meter.miou()


def test_scan_ranks_informative_layer_and_matches_probe_metric(tmp_path: Path) -> None:
    data = _fake_store(tmp_path / "data.zarr", {"training": 40, "validation": 12})
    backbone = FakeBackbone()
    lambdas = [0.01, 1.0, 100.0]
    table = scan.run_scan(backbone, data, None, ["layer_01", "layer_00"], None, lambdas, batch_size=8)
    assert list(table.columns) == scan.COLUMNS
    assert table["layer"].tolist() == ["layer_00", "layer_01"]  # forward order
    miou = table.set_index("layer")["miou"]
    assert miou["layer_01"] > 0.95 and miou["layer_00"] < 0.5
    # One extract call per batch with every key: 36 fit, 4 held-out (10% of 40), 12 validation images.
    both = ("layer_00", "layer_01")
    assert [c[:2] for c in backbone.calls] == [(8, both)] * 4 + [(4, both), (4, both), (8, both), (4, both)]
    # Same mIoU as the probes' pipeline: every lambda on the held-out training images, with
    # statistics of the other training images; validation at the chosen lambda only.
    fit, held = scan.holdout_split(None, 40, 0.1, 0)
    grid = pd.DataFrame(table.attrs["grid"]).set_index(["layer", "lambda"])
    assert list(grid.columns) == ["holdout_miou", "holdout_acc"]
    for key, row in table.set_index("layer").iterrows():
        stats = scan.fit_pass(backbone, data, fit, [key], backbone.dims(), None, 8, scan.NUM_CLASSES,
                              torch.device("cpu"), "test")
        weights, bias = stats[key].solve(lambdas)
        for i, lam in enumerate(lambdas):
            assert _naive_miou(backbone, data, key, weights[i], bias[i], "training", held) == pytest.approx(
                grid.loc[(key, lam), "holdout_miou"], abs=1e-3), (key, lam)
        i = lambdas.index(row["best_lambda"])
        assert grid.loc[(key, row["best_lambda"]), "holdout_miou"] == row["holdout_miou"]
        assert grid.loc[key, "holdout_miou"].max() == row["holdout_miou"]
        assert _naive_miou(backbone, data, key, weights[i], bias[i]) == pytest.approx(row["miou"], abs=1e-3), key


def test_holdout_split() -> None:
    for n, fraction, seed, size in [(40, 0.1, 0, 4), (40, 0.1, 1, 4), (10, 0.25, 0, 2), (3, 0.01, 0, 1),
                                    (3, 0.99, 5, 2), (2, 0.5, 0, 1)]:
        fit, held = scan.holdout_split(None, n, fraction, seed)
        assert len(held) == size and len(fit) == n - size, (n, fraction)
        assert set(fit).isdisjoint(held) and sorted([*fit, *held]) == list(range(n))
        again = scan.holdout_split(None, n, fraction, seed)
        assert np.array_equal(fit, again[0]) and np.array_equal(held, again[1])
    assert not np.array_equal(scan.holdout_split(None, 40, 0.1, 0)[1], scan.holdout_split(None, 40, 0.1, 1)[1])
    # From the rows in use, in any order: the same positions of the sorted rows as for range(n).
    rows = [30, 2, 17, 9, 25, 11, 4, 40, 8, 21]
    fit, held = scan.holdout_split(rows, 50, 0.25, 3)
    positions = scan.holdout_split(None, len(rows), 0.25, 3)
    assert np.array_equal(held, np.sort(rows)[positions[1]]) and np.array_equal(fit, np.sort(rows)[positions[0]])
    for bad in ([7], []):
        with pytest.raises(ValueError, match="scan.holdout_fraction"):
            scan.holdout_split(bad, 50, 0.1, 0)
    with pytest.raises(ValueError, match="scan.holdout_fraction"):
        scan.holdout_split(None, 10, 1.0, 0)


def test_scan_with_one_training_image_names_the_key(tmp_path: Path) -> None:
    data = _fake_store(tmp_path / "data.zarr", {"training": 4, "validation": 4})
    backbone = FakeBackbone()
    with pytest.raises(ValueError, match="scan.holdout_fraction"):
        scan.run_scan(backbone, data, {"training": [2]}, ["layer_01"], None, [1.0], batch_size=4)
    assert backbone.calls == []  # refused before any forward


def test_validation_never_chooses_lambda(tmp_path: Path) -> None:
    """Two stores that differ only in their validation labels: the same lambdas are chosen, and
    validation mIoU differs. Chosen by validation (as the scan once did) they would differ: in the
    copy every validation label is the training majority class, which only the huge lambda
    (weights ~0, the bias predicts the majority everywhere) gets right."""
    p = [0.5] + [0.1] * (NUM - 1)
    data = _fake_store(tmp_path / "a.zarr", {"training": 40, "validation": 12}, class_p=p)
    labels = data["validation/labels"][:]
    copy = _copy_store(data, tmp_path / "b.zarr", validation_labels=np.where(labels == 255, 255, 0).astype(np.uint8))
    lambdas, keys = [0.01, 1.0, 1e6], ["layer_00", "layer_01"]
    tables = [scan.run_scan(FakeBackbone(), d, None, keys, None, lambdas, batch_size=8).set_index("layer")
              for d in (data, copy)]
    assert tables[0]["best_lambda"].equals(tables[1]["best_lambda"])
    assert tables[0]["holdout_miou"].equals(tables[1]["holdout_miou"])
    assert tables[0].attrs["grid"] == tables[1].attrs["grid"]
    assert (tables[0]["miou"] - tables[1]["miou"]).abs().min() > 0.1
    assert tables[0].loc["layer_01", "best_lambda"] < 1e6
    by_validation = [_validation_choice(d, keys, lambdas) for d in (data, copy)]
    assert by_validation[1]["layer_01"] == 1e6 != by_validation[0]["layer_01"]  # the test can tell


def _validation_choice(data: zarr.Group, keys: list[str], lambdas: list[float]) -> dict[str, float]:
    """The lambda per layer that validation mIoU would choose (the scan's old, optimistic rule)."""
    backbone = FakeBackbone()
    fit, _ = scan.holdout_split(None, data["training/images"].shape[0], 0.1, 0)
    cpu = torch.device("cpu")
    stats = scan.fit_pass(backbone, data, fit, keys, backbone.dims(), None, 8, scan.NUM_CLASSES, cpu, "fit")
    heads = {k: scan._solve(stats[k], lambdas)[0] for k in keys}
    meters = scan.score_pass(backbone, data, None, heads, None, 8, scan.NUM_CLASSES, cpu, "validation")
    return {k: lambdas[scan._best(meters[k])] for k in keys}


def test_scan_in_groups_and_with_prompts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _fake_store(tmp_path / "data.zarr", {"training": 16, "validation": 8})
    backbone = FakeBackbone()
    seen: list[tuple[str, list[int]]] = []

    def prompts(split: str, labels: np.ndarray, rows: np.ndarray) -> list[str]:
        assert np.array_equal(labels, data[f"{split}/labels"].get_orthogonal_selection((rows,)))
        seen.append((split, rows.tolist()))
        return [f"image of class {int(label.max())}" for label in labels]

    budget = scan_cost.stats_bytes([12])  # room for one layer: two fit passes
    with caplog.at_level("INFO", logger="layerprobe.scan"):
        table = scan.run_scan(backbone, data, {"training": list(range(12)), "validation": [1, 3, 5, 7]},
                              ["layer_00", "layer_01"], prompts, [1.0], batch_size=4, prompt="p1",
                              max_stats_bytes=budget)
    assert "2 groups" in caplog.text
    keys = [c[1] for c in backbone.calls]
    # 11 fit images per group (1 of the 12 rows held out), then hold-out and validation, every key.
    assert keys == [("layer_00",)] * 3 + [("layer_01",)] * 3 + [("layer_00", "layer_01")] * 2
    assert all(c[2] is not None and len(c[2]) == c[0] for c in backbone.calls)
    fit_rows, held_out = scan.holdout_split(list(range(12)), 12, 0.1, 0)
    fit_rows = sorted(fit_rows)
    fit = [("training", fit_rows[i:i + 4]) for i in range(0, len(fit_rows), 4)]
    assert [len(r) for _, r in fit] == [4, 4, 3]
    # the data-store rows of every batch: the fit rows (twice: two groups), the hold-out, validation
    assert seen == fit * 2 + [("training", sorted(held_out)), ("validation", [1, 3, 5, 7])]
    assert set(table["prompt"]) == {"p1"} and set(table["model"]) == {"fake"}
    assert len(pd.concat([table, table])) == 4  # attrs hold plain data: frames still concatenate


def test_scan_fills_prompts_as_extraction_does(tmp_path: Path) -> None:
    """The scan's prompt per image is the one its extraction store records: same rows, same fill,
    whatever the batching (here the shuffled control: each image gets a donor's class)."""
    from layerprobe.data.ade20k import CLASS_NAMES
    from layerprobe.models.prompts import prompt_filler

    data = _fake_store(tmp_path / "data.zarr", {"training": 16, "validation": 8})
    backbone = FakeBackbone()
    text, rows = "Describe the {category}", {"training": [0, 2, 3, 5, 8, 9, 10, 15], "validation": [1, 2, 6]}
    fill = scan.prompts_filler(text, list(CLASS_NAMES), "shuffled", 2, data)
    scan.run_scan(backbone, data, rows, ["layer_01"], fill, [1.0], batch_size=3)
    sent = [p for call in backbone.calls for p in call[2]]
    extraction = prompt_filler(text, "shuffled", CLASS_NAMES, 2, data)
    fit, held_out = scan.holdout_split(rows["training"], 16, 0.1, 0)
    order = [("training", sorted(fit)), ("training", sorted(held_out)), ("validation", rows["validation"])]

    def filled(fn):  # the passes' order: fit rows, held-out rows, validation
        return [p for split, chosen in order
                for p in fn(split, data[f"{split}/labels"].get_orthogonal_selection((np.array(chosen),)),
                            np.array(chosen))]

    assert sent == filled(extraction)
    assert sent != filled(prompt_filler(text, "dominant", CLASS_NAMES))


def test_scan_with_tiny_open_clip(tmp_path: Path) -> None:
    """The real backbone and data store path: every layer scanned, a finite table, no files."""
    _, backbone = tiny_backbone(tmp_path)
    data = tiny_data(tmp_path, training=8, validation=4)
    before = set(tmp_path.rglob("*"))
    table = scan.run_scan(backbone, data, None, sorted(backbone.dims()), None, [0.1, 10.0], batch_size=4)
    assert table["layer"].tolist() == [f"layer_{i:02d}" for i in range(5)]
    assert table["miou"].between(0, 1).all() and table["acc"].between(0, 1).all()
    assert set(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------- helpers

def test_rank_agreement() -> None:
    layers = [f"layer_{i:02d}" for i in range(5)]
    frame = lambda values, names=layers: pd.DataFrame(  # noqa: E731
        {"model": "m", "prompt": "none", "layer": names, "miou": values})
    probes = frame([0.1, 0.3, 0.2, 0.5, 0.4])
    assert scan_agreement.rank_agreement(frame([1, 3, 2, 5, 4]), probes) == pytest.approx(1.0)
    assert scan_agreement.rank_agreement(frame([5, 3, 4, 1, 2]), probes) == pytest.approx(-1.0)
    # Only common layers count; ties get mean ranks (textbook value for this case: 0.9487).
    partial = frame([1.0, 2.0, 2.0, 3.0], layers[:4])
    assert scan_agreement.rank_agreement(partial, frame([0.1, 0.2, 0.3, 0.4, 0.9])) == pytest.approx(0.9486833)
    assert math.isnan(scan_agreement.rank_agreement(frame([1.0], layers[:1]), probes))


def test_scan_keys() -> None:
    dims = {"layer_01": 8, "vision_02": 4, "projector": 8, "layer_00": 8}
    assert scan_cost.scan_keys(dims, "all") == ["vision_02", "projector", "layer_00", "layer_01"]
    assert scan_cost.scan_keys(dims, ["layer_01", "vision_05", "projector"]) == ["projector", "layer_01"]
    with pytest.raises(ValueError, match="scan.layers"):
        scan_cost.scan_keys(dims, ["vision_07"])
