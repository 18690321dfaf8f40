"""Fingerprints: for every artefact, exactly the config slice and inputs that shape its bytes.

A fingerprint is a flat mapping {config key: value} (e.g. ``"probe.lr": 0.001``,
``"models.tiny_vit.tiny.seed": 0``, ``"layer": "layer_02"``) and the short hash of its canonical
JSON. Each stage's slice includes its upstream stage's, so an edit changes exactly the
fingerprints of the artefacts it shapes:

    dataset content -> data (per resolution) -> store (model, prompt) -> layer -> probe (+ CLS variant)
                                     \\-> scan (model, prompt)
    every data, store, probe and scan fingerprint -> report

Rules pass ``hash`` as ``params`` (Snakemake reruns a job whose params changed); artefacts record
``record()`` (store attrs, manifests, checkpoints, metrics.json, scan sidecars), and readers
``check`` a record against the config's fingerprint, naming the differing keys.

Left out on purpose, because they change no result: ``store.parts``, ``probe.checkpoint_every_batches``,
``probe.ram_budget_mb``, ``probe.loader_mode`` (the order is ``epoch_order``'s), ``scan.max_stats_mb``,
``scan.enabled``/``scan.models``, resources and report settings (for all but the report). A stage's
device is in as its resolved type (``extract.device`` in stores, ``scan.device``, ``probe.device``:
``auto`` never reaches a fingerprint), with the stage's threads when it runs on the CPU (thread
counts change float sums there; ``layerprobe.devices``). A model's
other layers and prompts are not in a layer's fingerprint: adding one changes nothing that exists.
``VERSIONS`` are bumped by hand when code changes a stage's bytes (tests/test_stage_sources.py checks).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as lp_config
from . import devices
from .models.layers import parse_probe_id
from .models.prompts import SEEDED_FILLS
from .models.specs import LLM_KINDS

# Bump a stage's number when a code change alters what that stage writes.
# data 2: images read with their EXIF orientation applied, as mmseg does.
# probe 2: the loader keeps 4 batch buffers (was 3), so a budget holds smaller windows: another order.
# probe 3: per_image.npz and the mIoU's interval; epochs.csv says running_train_* (same training).
# probe 4: the order comes from probe.shuffle_window_chunks, not the RAM budget; metrics.json's `run`.
# scan 2: lambda chosen on held-out training images, not validation; validation scored once at it.
VERSIONS = {"data": 2, "features": 1, "probe": 4, "scan": 2, "synthetic": 1}
# Model-entry keys that decide the weights and the forward of a model (not which layers are kept).
# Not `revision`: the commit it resolves to is in `weights` (pinning the commit in use reruns nothing).
# `image_size`, `processor_kwargs`: mllm only (absent elsewhere, so other models' fingerprints stay as they were).
MODEL_KEYS = ("kind", "arch", "pretrained", "hub_id", "dtype", "attn_implementation", "prompt_format", "image_size",
              "processor_kwargs")


class StaleResultError(RuntimeError):
    """A result on disk was made with a config other than the current one."""


@dataclass(frozen=True)
class Fingerprint:
    inputs: dict[str, Any]  # flat: config key (or input name) -> JSON value

    @property
    def hash(self) -> str:
        blob = json.dumps(self.inputs, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """What an artefact stores: the hash and the inputs (to name differences later)."""
        return {"hash": self.hash, "inputs": dict(sorted(self.inputs.items()))}

    def __or__(self, other: dict[str, Any]) -> "Fingerprint":
        return Fingerprint({**self.inputs, **other})

    def differences(self, recorded: dict[str, Any] | None) -> list[str]:
        """'key: recorded -> current' for every input that differs from a stored record."""
        if not recorded or "inputs" not in recorded:
            return ["(no fingerprint recorded: made by an older layerprobe or by hand)"]
        old, new = recorded["inputs"], _plain(self.inputs)
        return [f"{k}: {_show(old.get(k, '<absent>'))} -> {_show(new.get(k, '<absent>'))}"
                for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]

    def matches(self, recorded: dict[str, Any] | None) -> bool:
        return bool(recorded) and recorded.get("hash") == self.hash

    def check(self, recorded: dict[str, Any] | None, where: str) -> None:
        """Raise StaleResultError naming `where` and the differing keys unless `recorded` matches."""
        if self.matches(recorded):
            return
        diff = self.differences(recorded)
        raise StaleResultError(f"{where}: made with another config (fingerprint "
                               f"{(recorded or {}).get('hash', 'none')}, the config gives {self.hash}); "
                               f"differing: {'; '.join(diff[:12])}{' …' if len(diff) > 12 else ''}. "
                               "Rerun snakemake to bring it up to date.")


def write(path: str | Path, fingerprint: Fingerprint) -> None:
    """The record as a JSON file, atomically, with the software's versions (a scan's sidecar)."""
    from .provenance import versions

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**fingerprint.record(), "versions": versions()}, indent=2))
    os.replace(tmp, path)


def expect(fingerprint: Fingerprint, planned: str, what: str) -> Fingerprint:
    """A job's guard: the fingerprint it computes equals the one Snakemake planned with."""
    if fingerprint.hash != planned:
        raise RuntimeError(f"{what}: the config gives fingerprint {fingerprint.hash}, but the job was planned with "
                           f"{planned}; did the config or the data change while the workflow ran?")
    return fingerprint


def _plain(inputs: dict[str, Any]) -> dict[str, Any]:
    """Values as they read back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(inputs, default=str))


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------

def dataset(config: dict[str, Any]) -> Fingerprint:
    """The images and labels: the generator settings (synthetic), the archive's checksum
    (dataset.download, while the unpacked files are untouched) or a content digest of the files."""
    ds = config["dataset"]
    if ds["synthetic"] is not None:
        inputs = {f"dataset.synthetic.{k}": v for k, v in ds["synthetic"].items()}
        return Fingerprint({**inputs, "version.synthetic": VERSIONS["synthetic"]})
    if ds["download"] and _pristine_archive(ds):  # the verified archive pins the content
        return Fingerprint({"dataset.url": ds["url"], "dataset.checksum": ds["checksum"]})
    return Fingerprint({"dataset.content": _content(ds["root"], ds["max_images"])})


def _pristine_archive(ds: dict[str, Any]) -> bool:
    """Download mode: the root is still to be fetched, or holds exactly what fetch_ade20k unpacked
    from the archive with this checksum. A root put there otherwise, or edited since, is
    identified by its content, as without download."""
    from .data.download import unpacked_archive

    root = Path(ds["root"])
    if not root.exists():
        return True
    record = unpacked_archive(root)
    return record is not None and record.get("checksum") == ds["checksum"] and \
        record.get("digest") == _content(ds["root"], {})


def _content(root: str, max_images: dict[str, int | None]) -> str:
    from .data.ade20k import DatasetError
    from .data.digest import dataset_digest

    try:
        return _memo(("content", root, tuple(sorted(max_images.items()))), lambda: dataset_digest(root, max_images))
    except (DatasetError, OSError) as err:  # a dry run on a machine without the data
        return f"unavailable ({type(err).__name__}: {err})"


_MEMO: dict[Any, Any] = {}


def _memo(key: Any, compute: Any) -> Any:
    """One digest per process: every job's params need it, and hashing is not free."""
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


def forget() -> None:
    """Drop memoized digests and commits (for a long-lived process whose data or weights changed)."""
    from .models import weights as lp_weights

    _MEMO.clear()
    lp_weights.forget_commits()


def data(config: dict[str, Any], resolution: int, geometry: str = "center_crop") -> Fingerprint:
    """A preprocessed data store: the dataset, the subset, the resolution and (pad only, so that
    centre-crop fingerprints stay as they were) the geometry."""
    ds = config["dataset"]
    return dataset(config) | {"dataset.class_names": ds["class_names"],
                              "dataset.max_images.training": ds["max_images"].get("training"),
                              "dataset.max_images.validation": ds["max_images"].get("validation"),
                              "data.resolution": resolution, "version.data": VERSIONS["data"],
                              **({} if geometry == "center_crop" else {"data.geometry": geometry})}


def tiny_model(config: dict[str, Any], name: str) -> Fingerprint:
    """A locally built tiny model: its `tiny` block and where it is saved, nothing else."""
    model = config["models"][name]
    keys = ("kind", "arch", "pretrained", "hub_id")
    return Fingerprint({**{f"models.{name}.{k}": model[k] for k in keys if k in model},
                        **{f"models.{name}.tiny.{k}": v for k, v in (model.get("tiny") or {}).items()}})


def _model(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Weights and forward: loading keys, the tiny block, the weights' identity (the device is the stage's)."""
    model = config["models"][name]
    inputs = {f"models.{name}.{k}": model[k] for k in MODEL_KEYS if k in model}
    if model["kind"] not in LLM_KINDS:
        inputs.pop(f"models.{name}.prompt_format", None)
    inputs.update({f"models.{name}.tiny.{k}": v for k, v in (model.get("tiny") or {}).items()})
    inputs.update(weights(config, name))
    return inputs


def weights(config: dict[str, Any], name: str) -> dict[str, str]:
    """The weights' identity (a hub commit, a content digest, a URL; `layerprobe.models.weights`), once per process."""
    from .models import weights as lp_weights

    model = config["models"][name]
    cache_dir = config["weights"]["cache_dir"]
    return _memo(("weights", name, json.dumps(model, sort_keys=True, default=str), cache_dir),
                 lambda: lp_weights.identity(name, model, cache_dir))


def _prompt(config: dict[str, Any], name: str, prompt: str) -> dict[str, Any]:
    """A store id's prompt: its text and, with `{category}`, the fill of THIS store (not the
    model's list: adding a fill leaves the other fills' stores alone) and, for the seeded fills,
    `category_seed`. The keys of a `dominant` store are those of before fills had a choice."""
    model = config["models"][name]
    inputs: dict[str, Any] = {"prompt": prompt}
    text = lp_config.prompt_text(model, prompt)
    if text is not None:
        prompt_id, _ = lp_config.parse_store_id(prompt)
        inputs[f"models.{name}.prompts.{prompt_id}.text"] = text
        fill = lp_config.store_fill(model, prompt)
        if fill is not None:
            inputs[f"models.{name}.category_fill"] = fill
        if fill in SEEDED_FILLS:
            inputs[f"models.{name}.category_seed"] = model["category_seed"]
    return inputs


def store(config: dict[str, Any], name: str, prompt: str) -> Fingerprint:
    """What shapes every layer of a (model, prompt) store; a change discards the whole store."""
    model = config["models"][name]
    resolution, geometry = lp_config.spec(config, name).image_size, lp_config.geometry(config, name)
    return data(config, resolution, geometry) | {**_model(config, name), **_prompt(config, name, prompt),
                                       **devices.fingerprint_inputs(config, "extract"),
                                       f"models.{name}.batch_size": model["batch_size"],
                                       "store.chunk_images": config["store"]["chunk_images"],
                                       "store.shuffle_seed": config["store"]["shuffle_seed"],
                                       "version.features": VERSIONS["features"]}


def layer(config: dict[str, Any], name: str, prompt: str, key: str) -> Fingerprint:
    """One layer's feature array: its store's fingerprint and the layer key."""
    return store(config, name, prompt) | {"layer": key}


def probe(config: dict[str, Any], name: str, prompt: str, probe_id: str) -> Fingerprint:
    """One probe: its layer's features, the CLS variant and every probe setting that shapes it
    (`ProbeSettings.fingerprint_inputs`: the settings class names them once)."""
    from .probing.settings import ProbeSettings

    key, _ = parse_probe_id(probe_id)
    return layer(config, name, prompt, key) | {**ProbeSettings.from_config(config, probe_id).fingerprint_inputs(),
                                                "version.probe": VERSIONS["probe"]}


def scan(config: dict[str, Any], name: str, prompt: str) -> Fingerprint:
    """A layer scan: data, model, prompt and the scan's own settings (it reads no store)."""
    from .scan.settings import ScanSettings

    resolution, geometry = lp_config.spec(config, name).image_size, lp_config.geometry(config, name)
    return data(config, resolution, geometry) | {**_model(config, name), **_prompt(config, name, prompt),
                                                 **ScanSettings.from_config(config).fingerprint_inputs(),
                                                 **devices.fingerprint_inputs(config, "scan"),
                                                 "version.scan": VERSIONS["scan"]}


def report(config: dict[str, Any]) -> Fingerprint:
    """The report: every result it shows (by fingerprint) and its own settings."""
    inputs: dict[str, Any] = {f"report.{k}": v for k, v in config["report"].items()}
    for resolution, geometry in lp_config.data_stores(config):
        inputs[f"data:{lp_config.data_name(resolution, geometry)}"] = data(config, resolution, geometry).hash
    for name, model in config["models"].items():
        for prompt in lp_config.prompt_ids(model):
            inputs[f"store:{name}/{prompt}"] = store(config, name, prompt).hash
            for probe_id in lp_config.probe_ids(model, config["probe"]["seeds"]):
                inputs[f"probe:{name}/{prompt}/{probe_id}"] = probe(config, name, prompt, probe_id).hash
    for name, prompt in lp_config.scan_targets(config):
        inputs[f"scan:{name}/{prompt}"] = scan(config, name, prompt).hash
    return Fingerprint(inputs)


def for_job(stage: str, config: dict[str, Any], wildcards: Any) -> Fingerprint:
    """The fingerprint of the artefact one job of a stage makes, from the job's wildcards: what
    the rules pass as params and what the job checks it was planned with."""
    makers = {"data": lambda: data(config, int(wildcards.res)),
              "data_pad": lambda: data(config, int(wildcards.res), "pad"),
              "tiny_model": lambda: tiny_model(config, wildcards.model),
              "store": lambda: store(config, wildcards.model, wildcards.prompt),
              "probe": lambda: probe(config, wildcards.model, wildcards.prompt, wildcards.probe),
              "scan": lambda: scan(config, wildcards.model, wildcards.prompt),
              "report": lambda: report(config)}
    return makers[stage]()
