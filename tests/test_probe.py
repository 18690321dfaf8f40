"""Probe training: learns the demo classes, resumes exactly after interruption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from layerprobe.features.store import open_store
from layerprobe.probing.metrics import ImageCounts
from layerprobe.probing.probe import Interrupted, LinearHead, ProbeSettings, ProbeTrainer, train_probe
from tests.helpers import tiny_feature_store


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory):
    return tiny_feature_store(tmp_path_factory.mktemp("probe"), training=48, validation=16)[3]


def settings(**overrides) -> ProbeSettings:
    base = dict(epochs=4, lr=0.1, weight_decay=1e-4, batch_size=8, seed=0, batchnorm=True, concat_cls=False,
                ram_budget_bytes=92 * 2**10, device="cpu", checkpoint_every_batches=1000, shuffle_window_chunks=1)
    return ProbeSettings(**{**base, **overrides})


def test_head_shapes_and_upsampling():
    head = LinearHead(dim=8, grid=4, num_classes=5)
    out = head(torch.randn(2, 16, 8), out_size=32)
    assert out.shape == (2, 5, 32, 32)


def test_batchnorm_eval_statistics_fit_small_variance_features_after_few_batches():
    """Frozen features of small variance (LLaVA projector outputs): a few training batches must
    give eval-mode BatchNorm their true statistics, or eval scores collapse (seen on the demo)."""
    torch.manual_seed(0)
    head = LinearHead(dim=8, grid=2, num_classes=3)
    x = torch.randn(4, 4, 8) * 0.01 + 5.0
    head.train()
    for _ in range(5):
        head(x, out_size=2)
    head.eval()
    normalized = head.norm(x.reshape(-1, 8)).detach()
    assert abs(float(normalized.mean())) < 0.05 and 0.8 < float(normalized.std()) < 1.2


def test_probe_learns_separable_classes(feature_store, tmp_path):
    metrics = train_probe(feature_store, "layer_02", settings(epochs=15), tmp_path / "out", tmp_path / "ck.pt")
    # 12 synthetic classes on a 4x4 token grid scored at 32 px: boundaries cap it near 0.8;
    # an untrained head scores below 0.1.
    assert metrics["miou"] >= 0.65 and metrics["run"]["loader_mode"] == "chunks"
    rows = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert len(rows) == 15 and rows.loss.iloc[-1] < rows.loss.iloc[0]
    preds = np.load(tmp_path / "out" / "predictions.npz")
    assert preds["pred"].shape[1:] == (32, 32) and len(preds["ids"]) == 8
    # every validation image's counts, summing to the reported mIoU, which its interval brackets
    counts = ImageCounts.load(tmp_path / "out" / "per_image.npz")
    assert sorted(counts.ids) == sorted(open_store(feature_store).attrs["validation_image_ids"])
    assert counts.miou() == pytest.approx(metrics["miou"]) and counts.accuracy() == pytest.approx(metrics["acc"])
    assert metrics["miou_low"] < metrics["miou"] < metrics["miou_high"] and metrics["seed"] == 0
    assert counts.intersect.shape == counts.union.shape == (len(counts), 150)


def test_concat_cls_doubles_input(feature_store, tmp_path):
    metrics = train_probe(feature_store, "layer_04", settings(epochs=1, concat_cls=True, ram_budget_bytes=96 * 2**10),
                          tmp_path, tmp_path / "c.pt", name="layer_04+cls")
    assert 0 <= metrics["miou"] <= 1 and metrics["concat_cls"] and metrics["probe"] == "layer_04+cls"


def _run(feature_store, tmp_path, name, **kw) -> pd.DataFrame:
    out = tmp_path / name
    train_probe(feature_store, "layer_03", settings(**kw), out, tmp_path / f"{name}.pt")
    return pd.read_csv(out / "epochs.csv")


class _Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint is on disk."""


def _kill_after_epoch(monkeypatch, epoch: int) -> None:
    original = ProbeTrainer.save

    def save_then_die(self):
        original(self)
        if self.epoch == epoch and self.batch == 0:
            raise _Killed

    monkeypatch.setattr(ProbeTrainer, "save", save_then_die)


def test_killed_between_epochs_resumes_identically(feature_store, tmp_path, monkeypatch):
    reference = _run(feature_store, tmp_path, "ref")
    out, ck = tmp_path / "resumed", tmp_path / "resumed.pt"
    with monkeypatch.context() as patch:
        _kill_after_epoch(patch, 2)  # only 2 of 4 epochs survive
        with pytest.raises(_Killed):
            train_probe(feature_store, "layer_03", settings(), out, ck)
    assert torch.load(ck, weights_only=False)["epoch"] == 2
    train_probe(feature_store, "layer_03", settings(), out, ck)
    pd.testing.assert_frame_equal(pd.read_csv(out / "epochs.csv"), reference)
    assert not ck.exists()  # a finished probe leaves nothing a forced rerun could resume


def test_checkpoint_of_other_settings_is_discarded_not_resumed(feature_store, tmp_path, monkeypatch, caplog):
    """lr 0.1 -> 0.05 (and 4 -> 5 epochs) after a killed run: the rerun starts from epoch 1 and
    equals a from-scratch run with the new settings."""
    reference = _run(feature_store, tmp_path, "new", lr=0.05, epochs=5)
    out, ck = tmp_path / "edited", tmp_path / "edited.pt"
    with monkeypatch.context() as patch:
        _kill_after_epoch(patch, 3)
        with pytest.raises(_Killed):
            train_probe(feature_store, "layer_03", settings(), out, ck)
    assert ck.exists()
    with caplog.at_level("INFO", logger="layerprobe.probe"):
        train_probe(feature_store, "layer_03", settings(lr=0.05, epochs=5), out, ck)
    assert "discarding checkpoint" in caplog.text and "probe.lr: 0.1 -> 0.05" in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(out / "epochs.csv"), reference)


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from layerprobe.probing.probe import ProbeTrainer, train_probe
from tests.test_probe import settings
original = ProbeTrainer.evaluate
def slow_final(self, keep_rows=None, **kw):
    if keep_rows is not None:  # the final evaluation, after the last epoch's checkpoint
        open({flag!r}, "w").close()
        time.sleep(60)
    return original(self, keep_rows, **kw)
ProbeTrainer.evaluate = slow_final
train_probe({store!r}, "layer_03", settings(), {out!r}, {ck!r})
"""


def test_sigkill_after_the_last_epoch_before_outputs_finishes_on_rerun(feature_store, tmp_path):
    """The window between the last checkpoint and metrics.json (a final evaluation over 2,000
    LLaVA images takes a while; a time limit can land there): the rerun must finish."""
    reference = _run(feature_store, tmp_path, "ref3")
    out, ck, flag = tmp_path / "late", tmp_path / "late.pt", tmp_path / "in_final_eval"
    root = Path(__file__).resolve().parents[1]
    script = KILL_SCRIPT.format(root=str(root), flag=str(flag), store=str(feature_store), out=str(out), ck=str(ck))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    deadline = time.time() + 120
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the probe never reached its final evaluation"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(ck, weights_only=False)["epoch"] == 4 and not (out / "metrics.json").exists()
    for left in out.iterdir():  # Snakemake deletes a failed job's declared outputs
        left.unlink()
    metrics = train_probe(feature_store, "layer_03", settings(), out, ck)
    pd.testing.assert_frame_equal(pd.read_csv(out / "epochs.csv"), reference)
    assert metrics["epochs"] == 4 and (out / "metrics.json").is_file() and not ck.exists()
    assert json.loads((out / "metrics.json").read_text())["miou"] == metrics["miou"]


def test_sigterm_mid_epoch_checkpoints_and_resumes_identically(feature_store, tmp_path):
    reference = _run(feature_store, tmp_path, "ref2")
    ck = tmp_path / "sig.pt"
    from layerprobe.features.store import open_store

    trainer = ProbeTrainer(open_store(feature_store), "layer_03", settings(), ck)
    original = trainer.opt.step
    steps = {"n": 0}

    def step_then_signal(*a, **k):
        steps["n"] += 1
        if steps["n"] == 9:  # epoch 2, batch 3 (6 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **k)

    trainer.opt.step = step_then_signal
    with pytest.raises(Interrupted):
        trainer.fit(tmp_path / "sig.csv")
    state = torch.load(ck, weights_only=False)
    assert (state["epoch"], state["batch"]) == (1, 3)
    out = tmp_path / "sig_out"
    train_probe(feature_store, "layer_03", settings(), out, ck)
    pd.testing.assert_frame_equal(pd.read_csv(out / "epochs.csv"), reference)


def test_chunk_shuffle_matches_full_permutation_within_noise(feature_store, tmp_path):
    """Same probe, chunk-window shuffling (windows of one chunk, the smallest) vs a full random
    permutation (a window covering the split): same quality."""
    chunked = train_probe(feature_store, "layer_02", settings(epochs=15), tmp_path / "a", tmp_path / "a.pt")
    whole_split = settings(epochs=15, shuffle_window_chunks=1000, loader_mode="resident")
    full = train_probe(feature_store, "layer_02", whole_split, tmp_path / "b", tmp_path / "b.pt")
    assert (chunked["run"]["loader_mode"], full["run"]["loader_mode"]) == ("chunks", "resident")
    assert abs(chunked["miou"] - full["miou"]) <= 0.05, (chunked["miou"], full["miou"])


def _outputs(folder: Path) -> dict[str, object]:
    """Every output of a probe, metrics.json less `run` (how the run went on its machine)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("run")
    out: dict[str, object] = {"metrics": metrics, "epochs.csv": (folder / "epochs.csv").read_bytes()}
    for name in ("predictions.npz", "per_image.npz"):
        with np.load(folder / name) as arrays:
            out[name] = {k: arrays[k].tobytes() for k in arrays.files}
    return out


def test_the_same_probe_whatever_the_ram_budget_or_the_loader_mode(feature_store, tmp_path, monkeypatch):
    """ram_budget_mb and loader_mode are settings of the machine: a budget holding one window
    (no read-ahead), one holding two, a resident split and a resident split beyond the budget
    train the same probe, byte for byte; so does a probe killed after epoch 3 and resumed with
    another budget. At real sizes this is a 512 MB layer under 256 MiB (chunks) and 1 GiB
    (resident); the store here has 12 chunks of 8 KiB rows, a window of 4 chunks."""
    window, per_window = 4, 4 * 4 * 2048  # 4 chunks of 4 images of 2 KiB (16 tokens x 32 x fp16 + 32x32 labels)
    batches = 4 * 8 * 2048
    one, two = ((n * per_window + batches) * 8 // 7 + 1 for n in (1, 2))  # the margin is an eighth here
    runs = {"one window": dict(ram_budget_bytes=one, loader_mode="chunks"),
            "two windows": dict(ram_budget_bytes=two, loader_mode="chunks"),
            "resident (fits)": dict(ram_budget_bytes=8 * 2**20, loader_mode="auto"),
            "resident (forced)": dict(ram_budget_bytes=one, loader_mode="resident")}
    results, modes = {}, {}
    for name, machine in runs.items():
        metrics = train_probe(feature_store, "layer_02", settings(epochs=5, shuffle_window_chunks=window, **machine),
                              tmp_path / name, tmp_path / f"{name}.pt")
        results[name], modes[name] = _outputs(tmp_path / name), metrics["run"]["loader_mode"]
    assert modes == {"one window": "chunks", "two windows": "chunks", "resident (fits)": "resident",
                     "resident (forced)": "resident"}
    out, ck = tmp_path / "resumed", tmp_path / "resumed.pt"
    with monkeypatch.context() as patch:
        _kill_after_epoch(patch, 3)
        with pytest.raises(_Killed):
            train_probe(feature_store, "layer_02",
                        settings(epochs=5, shuffle_window_chunks=window, **runs["one window"]), out, ck)
    train_probe(feature_store, "layer_02", settings(epochs=5, shuffle_window_chunks=window, **runs["two windows"]),
                out, ck)
    results["killed after epoch 3, resumed with two windows"] = _outputs(out)
    reference = results.pop("one window")
    for name, result in results.items():
        assert result == reference, name


def test_centre_crop_probe_writes_no_whole_image_score(feature_store, tmp_path):
    metrics = train_probe(feature_store, "layer_01", settings(epochs=1), tmp_path / "cc", tmp_path / "cc.pt")
    assert "whole_image_miou" not in metrics and not (tmp_path / "cc" / "whole_image_per_image.npz").exists()


def test_pad_probe_is_also_scored_on_whole_original_annotations(tmp_path):
    """A pad store's probe scores every validation image at its original 40 x 48 on its whole
    annotation, image by image: the per-image counts cover exactly each image's labelled pixels
    and give whole_image_miou."""
    from layerprobe.data.preprocess import ade20k, open_data, preprocess
    from layerprobe.data.synthetic import write_dataset
    from layerprobe.features.extract import build_store
    from layerprobe.features.store import open_store
    from layerprobe.models.backbones import load_backbone
    from layerprobe.probing.metrics import ImageCounts
    from tests.helpers import KEYS, tiny_config, tiny_layout

    cfg = tiny_config(tmp_path, 16, 6, geometry="pad")
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=16, validation=6, height=40, width=48)
    preprocess(root, tmp_path / "32px_pad.zarr", tmp_path / "32px_pad.json", 32, {}, chunk_images=4, geometry="pad")
    data = open_data(tmp_path / "32px_pad.zarr")
    path = tmp_path / "features.zarr"
    build_store(load_backbone("tiny", cfg["models"]["tiny"], "cpu"), data, path, tmp_path / "features.json",
                tiny_layout(cfg, data), KEYS[:3], 4)
    assert open_store(path).attrs["geometry"] == "pad"
    metrics = train_probe(path, "layer_02", settings(epochs=3), tmp_path / "out", tmp_path / "ck.pt")
    assert 0 < metrics["whole_image_miou"] <= 1 and 0 < metrics["whole_image_acc"] <= 1
    counts = ImageCounts.load(tmp_path / "out" / "whole_image_per_image.npz")
    assert counts.ids == open_store(path).attrs["validation_image_ids"]  # store order, every image once
    labelled = {s.image_id: int((ade20k.read_sample(s)[1] != ade20k.IGNORE).sum())
                for s in ade20k.list_samples(root, "validation")}
    assert counts.label_pixels.tolist() == [labelled[i] for i in counts.ids]
    assert counts.miou() == pytest.approx(metrics["whole_image_miou"])
    assert counts.accuracy() == pytest.approx(metrics["whole_image_acc"])
