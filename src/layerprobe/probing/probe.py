"""Linear segmentation probe on frozen patch tokens, resumable at any batch.

Head and step: `layerprobe.probing.step` (optional BatchNorm, a 1x1 linear map to 150 classes,
logits bilinearly upsampled to the label size, cross-entropy ignoring 255, AdamW).
A checkpoint (head, optimizer, RNG, running metrics, epoch rows, and the probe's fingerprint) is
written atomically every epoch, every `checkpoint_every_batches` batches and on SIGTERM/SIGUSR1,
to a path that is not a declared Snakemake output, so a restarted job continues exactly where it
stopped. A checkpoint with another fingerprint (other settings, other features) is discarded,
never resumed; a finished probe deletes its checkpoint after writing its outputs, metrics.json last.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.ade20k import CLASS_NAMES
from ..devices import require
from ..features.loader import ChunkShuffleLoader
from ..fingerprint import Fingerprint
from ..models.backbones import resolve_device
from ..progress import progress
from ..provenance import versions
from .intervals import LEVEL, RESAMPLES, miou_interval
from .metrics import SegmentationMeter
from .settings import ProbeSettings
from .step import LinearHead, ProbeStep, probe_inputs

log = logging.getLogger("layerprobe.probe")
# running_train_*: accumulated over the epoch's batches in train mode while the head changes: a
# trend, not the trained head's training score (that would need an eval pass over the split).
CSV_COLUMNS = ["epoch", "loss", "running_train_miou", "running_train_acc", "test_miou", "test_acc"]


class Interrupted(Exception):
    """SIGTERM/SIGUSR1 arrived; the checkpoint is saved and the job should exit for a retry."""


class _SignalFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self.previous[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def default_fingerprint(group: Any, key: str, settings: ProbeSettings) -> Fingerprint:
    """For a probe run outside the workflow: the store's fingerprint and the layer, with the settings'
    own fingerprint inputs, as `fingerprint.probe` has them for the workflow."""
    from ..fingerprint import VERSIONS

    return Fingerprint({"store": (group.attrs.get("fingerprint") or {}).get("hash"), "layer": key,
                        **settings.fingerprint_inputs(), "version.probe": VERSIONS["probe"]})


class ProbeTrainer:
    def __init__(self, group: Any, key: str, settings: ProbeSettings, checkpoint: Path,
                 fingerprint: Fingerprint | None = None) -> None:
        self.s, self.key, self.checkpoint = settings, key, Path(checkpoint)
        self.fingerprint = fingerprint or default_fingerprint(group, key, settings)
        self.device = torch.device(resolve_device(settings.device))
        require(self.device.type, "probe.device", settings.device)  # exactly the resolved device, or a clear stop
        self.train_loader = self._loader(group, "training", shuffle=True)
        self.test_loader = self._loader(group, "validation", shuffle=False)
        dims = group.attrs["dims"][key] * (2 if settings.concat_cls else 1)
        torch.manual_seed(settings.seed)
        self.head = LinearHead(dims, group.attrs["grid"], batchnorm=settings.batchnorm).to(self.device)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.label_size = group["training/labels"].shape[-1]
        self.step = ProbeStep(self.head, self.opt, self.label_size, self.device, settings.concat_cls)
        self.rows: list[dict[str, float]] = []
        self.epoch, self.batch = 0, 0  # next batch to run
        self.loss_sum, self.loss_count = 0.0, 0
        self.train_meter = SegmentationMeter()

    def _loader(self, group: Any, split: str, shuffle: bool) -> ChunkShuffleLoader:
        cls = group[f"{split}/{self.key}_cls"] if self.s.concat_cls else None
        return ChunkShuffleLoader(group[f"{split}/{self.key}"], group[f"{split}/labels"], cls=cls,
                                  batch_size=self.s.batch_size, ram_budget_bytes=self.s.ram_budget_bytes,
                                  window_chunks=self.s.shuffle_window_chunks, seed=self.s.seed, shuffle=shuffle,
                                  device=str(self.device), mode=self.s.loader_mode)

    # --- checkpointing -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict(), "rows": self.rows,
                "epoch": self.epoch, "batch": self.batch, "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "train_meter": self.train_meter.state(),
                "rng": torch.get_rng_state(), "fingerprint": self.fingerprint.record()}

    def save(self) -> None:
        _save_atomic(self.state(), self.checkpoint)

    def resume(self) -> bool:
        """Continue from the checkpoint if it was made by this very probe; discard it otherwise."""
        if not self.checkpoint.is_file():
            return False
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=False)
        if not self.fingerprint.matches(state.get("fingerprint")):
            log.info("discarding checkpoint %s: made by another probe (%s); starting from epoch 1", self.checkpoint,
                     "; ".join(self.fingerprint.differences(state.get("fingerprint"))))
            self.checkpoint.unlink()
            return False
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self.rows, self.epoch, self.batch = state["rows"], state["epoch"], state["batch"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.train_meter.load(state["train_meter"])
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d batch %d", self.checkpoint, self.epoch + 1, self.batch)
        return True

    # --- training ------------------------------------------------------------------------------
    def fit(self, csv_path: Path) -> list[dict[str, float]]:
        """Train the remaining epochs; epochs.csv holds every epoch, also when none was left
        (a job killed after its last checkpoint but before its outputs)."""
        with _SignalFlag() as flag:
            while self.epoch < self.s.epochs:
                self._train_epoch(flag)
                row = self._finish_epoch()
                log.info("Epoch %03d | loss %.4f | running train mIoU %.4f acc %.4f | test mIoU %.4f acc %.4f",
                         row["epoch"], row["loss"], row["running_train_miou"], row["running_train_acc"],
                         row["test_miou"], row["test_acc"])
                _write_csv(csv_path, self.rows)
                self.save()
        _write_csv(csv_path, self.rows)
        return self.rows

    def _train_epoch(self, flag: _SignalFlag) -> None:
        self.head.train()
        self.train_loader.set_epoch(self.epoch)
        batches = self.train_loader.iterate(skip=self.batch)
        desc = f"epoch {self.epoch + 1}/{self.s.epochs}"
        total = len(self.train_loader) - self.batch
        for feats, cls, labels, _ in progress(batches, desc=desc, total=total, unit="batch"):
            loss, pred, labels = self.step(feats, cls, labels)
            self.loss_sum += loss.item() * len(labels)
            self.loss_count += len(labels)
            self.train_meter.update(pred, labels)
            self.batch += 1
            if flag.signum is not None or self.batch % self.s.checkpoint_every_batches == 0:
                self.save()
                if flag.signum is not None:
                    raise Interrupted(f"signal {flag.signum}: checkpoint saved at epoch {self.epoch + 1} "
                                      f"batch {self.batch}")

    def _finish_epoch(self) -> dict[str, float]:
        self.step.release()  # the evaluation's tensors, not both at once
        test = self.evaluate()
        row = {"epoch": self.epoch + 1, "loss": self.loss_sum / max(self.loss_count, 1),
               "running_train_miou": self.train_meter.miou(), "running_train_acc": self.train_meter.accuracy(),
               "test_miou": test.miou(), "test_acc": test.accuracy()}
        self.rows.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.loss_sum, self.loss_count, self.train_meter = 0.0, 0, SegmentationMeter()
        self.last_test = test
        return row

    @torch.inference_mode()
    def evaluate(self, keep_rows: set[int] | None = None, per_image: bool = False) -> SegmentationMeter:
        """Validation metrics; optionally keeps predictions for some store rows, and per-image
        counts (`self.evaluated_rows` then lists the store rows in counting order)."""
        self.head.eval()
        meter, self.kept, self.evaluated_rows = SegmentationMeter(per_image=per_image), {}, []
        for feats, cls, labels, rows in self.test_loader.iterate():
            pred = self.head(probe_inputs(feats, cls, self.s.concat_cls), self.label_size).argmax(1)
            meter.update(pred, labels)
            if per_image:
                self.evaluated_rows += rows.tolist()
            for i, row in enumerate(rows.tolist()):
                if keep_rows and row in keep_rows:
                    self.kept[row] = pred[i].to(torch.uint8).cpu().numpy()
        return meter

    def grid_logit_batches(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """(validation grid logits (B, C, g, g), store rows) per batch, in eval mode."""
        self.head.eval()
        for feats, cls, _, rows in self.test_loader.iterate():
            with torch.inference_mode():  # not around the yield: the caller's code would run inside it
                logits = self.head.grid_logits(probe_inputs(feats, cls, self.s.concat_cls))
            yield logits, rows


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (row[k] if k == "epoch" else f"{row[k]:.6f}") for k in CSV_COLUMNS})
    os.replace(tmp, path)


def train_probe(store_path: str | Path, key: str, settings: ProbeSettings, out_dir: str | Path,
                checkpoint: str | Path, fingerprint: Fingerprint | None = None,
                name: str | None = None, data_store: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) one probe; write epochs.csv, predictions.npz, per_image.npz (every
    validation image's intersection and union per class) and metrics.json (last, with the
    mIoU's bootstrap interval).

    `fingerprint` (fingerprint.probe() in the workflow) goes into the checkpoint and metrics.json;
    `name` is the probe's id (layer key, '+cls' for the CLS variant). A store of the pad geometry
    is also scored on whole images, against the original annotations in `data_store` (default:
    the data store it was made from, in its attrs).
    """
    from ..features.store import open_store

    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    group = open_store(store_path)
    trainer = ProbeTrainer(group, key, settings, checkpoint, fingerprint)
    trainer.resume()
    start = time.perf_counter()
    rows = trainer.fit(out_dir / "epochs.csv")
    ids = group.attrs["validation_image_ids"]
    chosen = sorted(ids)[:settings.saved_predictions]
    keep = {ids.index(i) for i in chosen}
    final = trainer.evaluate(keep_rows=keep, per_image=True)
    preds = np.stack([trainer.kept[ids.index(i)] for i in chosen]) if chosen else np.zeros((0, 1, 1), np.uint8)
    np.savez_compressed(out_dir / "predictions.npz", ids=np.array(chosen), pred=preds)
    counts = final.image_counts([ids[row] for row in trainer.evaluated_rows])
    counts.save(out_dir / "per_image.npz")  # what the report's paired intervals resample
    interval = miou_interval(counts)
    whole = _whole_image(trainer, group, data_store, out_dir) if group.attrs.get("geometry") == "pad" else {}
    best = max(rows, key=lambda r: r["test_miou"])
    iou = final.per_class_iou()
    metrics = {"model": group.attrs["model"], "prompt": group.attrs["prompt_id"], "layer": key,
               "probe": name or key, "concat_cls": settings.concat_cls, "seed": settings.seed,
               "miou": final.miou(), "miou_low": interval.low, "miou_high": interval.high,
               "interval": f"{LEVEL:.0%} bootstrap over {len(counts)} validation images ({RESAMPLES} resamples)",
               "acc": final.accuracy(), "best_epoch": int(best["epoch"]),
               "best_test_miou": best["test_miou"], "epochs": len(rows),
               "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
               "class_names": list(CLASS_NAMES), **whole, "fingerprint": trainer.fingerprint.record(),
               "versions": versions(),
               # How this run went on this machine: never a number of the probe's.
               "run": {"loader_mode": trainer.train_loader.mode, "train_seconds": time.perf_counter() - start}}
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / "metrics.json")  # last: a probe with metrics.json is whole
    checkpoint.unlink(missing_ok=True)  # finished: nothing a forced rerun could resume
    return metrics


def _whole_image(trainer: ProbeTrainer, group: Any, data_store: str | Path | None, out_dir: Path) -> dict[str, float]:
    """Pad geometry: every validation image scored at its original size on its whole annotation
    (mmseg's protocol); per-image counts to whole_image_per_image.npz, before metrics.json."""
    from ..data.preprocess import OriginalAnnotations, open_data
    from .wholeimage import evaluate

    data_store = data_store or group.attrs.get("data_store")
    if data_store is None:
        raise ValueError("a pad-geometry store is scored on whole images: give the data store it was made from")
    data = open_data(data_store)
    meter, ids = evaluate(trainer.grid_logit_batches(), OriginalAnnotations(data), group.attrs["validation_order"],
                          group.attrs["validation_image_ids"], data.attrs["validation_image_ids"])
    counts = meter.image_counts(ids)
    counts.save(out_dir / "whole_image_per_image.npz")
    interval = miou_interval(counts)
    return {"whole_image_miou": meter.miou(), "whole_image_miou_low": interval.low,
            "whole_image_miou_high": interval.high, "whole_image_acc": meter.accuracy()}
