"""Fingerprints, without Snakemake: each edit changes exactly the artefacts it shapes."""

from __future__ import annotations

import copy

import pytest
import yaml

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.data.digest import dataset_digest
from layerprobe.data.synthetic import write_dataset
from tests.conftest import ROOT


@pytest.fixture()
def demo() -> dict:
    return yaml.safe_load((ROOT / "config/demo.yaml").read_text())


def every_fingerprint(raw: dict) -> dict[str, str]:
    """Artefact -> hash for every artefact a config defines."""
    cfg = lp_config.validate(raw)
    out = {f"data:{lp_config.data_name(r, g)}": lp_fp.data(cfg, r, g).hash for r, g in lp_config.data_stores(cfg)}
    for name, model in cfg["models"].items():
        if model.get("tiny"):
            out[f"tiny:{name}"] = lp_fp.tiny_model(cfg, name).hash
        for prompt in lp_config.prompt_ids(model):
            out[f"store:{name}/{prompt}"] = lp_fp.store(cfg, name, prompt).hash
            for probe_id in lp_config.probe_ids(model):
                out[f"probe:{name}/{prompt}/{probe_id}"] = lp_fp.probe(cfg, name, prompt, probe_id).hash
    for name, prompt in lp_config.scan_targets(cfg):
        out[f"scan:{name}/{prompt}"] = lp_fp.scan(cfg, name, prompt).hash
    out["report"] = lp_fp.report(cfg).hash
    return out


def changed(before: dict, edit) -> set[str]:
    """Artefacts whose fingerprint differs after `edit`, plus new ones."""
    after_raw = copy.deepcopy(before)
    edit(after_raw)
    old, new = every_fingerprint(before), every_fingerprint(after_raw)
    return {k for k in new if old.get(k) != new[k]}


CATEGORY = ("describe_category", "describe_category+shuffled")  # demo.yaml: the oracle and its control
LLAVA_IDS = ("describe", *CATEGORY)
LLAVA_PROBES = {f"probe:tiny_llava/{p}/{k}" for p in LLAVA_IDS
                for k in ("vision_01", "vision_02", "projector", "layer_00", "layer_01", "layer_02")}
VIT_PROBES = {f"probe:tiny_vit/none/layer_{i:02d}" for i in range(5)}
LLAVA_STORES = {f"store:tiny_llava/{p}" for p in LLAVA_IDS}
SCANS = {"scan:tiny_vit/none"} | {f"scan:tiny_llava/{p}" for p in LLAVA_IDS}


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["models"]["tiny_llava"]["vision_layers"].insert(0, 0),
     {f"probe:tiny_llava/{p}/vision_00" for p in LLAVA_IDS} | {"report"}),
    (lambda c: c["models"]["tiny_llava"]["layers"].remove(1), {"report"}),
    (lambda c: c["probe"].update(lr=0.05, epochs=12), LLAVA_PROBES | VIT_PROBES | {"report"}),
    (lambda c: c["models"]["tiny_vit"].update(concat_cls=[False, True]),
     {f"probe:tiny_vit/none/layer_{i:02d}+cls" for i in range(5)} | {"report"}),
    (lambda c: c["scan"].update(lambdas=[0.1, 1.0]), SCANS | {"report"}),
    (lambda c: c["scan"].update(holdout_fraction=0.5), SCANS | {"report"}),
    (lambda c: c["scan"].update(holdout_seed=3), SCANS | {"report"}),
    (lambda c: c["scan"].update(max_stats_mb=1), set()),
    (lambda c: c["models"]["tiny_llava"]["prompts"][1].update(text="Find the {category} here"),
     {f"{kind}:tiny_llava/{p}" for kind in ("store", "scan") for p in CATEGORY} | {"report"}
     | {p for p in LLAVA_PROBES if "describe_category" in p}),
    (lambda c: c["models"]["tiny_vit"]["tiny"].update(seed=1),
     {"tiny:tiny_vit", "store:tiny_vit/none", "scan:tiny_vit/none", "report"} | VIT_PROBES),
    (lambda c: c["store"].update(chunk_images=4),
     {"store:tiny_vit/none", "report"} | LLAVA_STORES | LLAVA_PROBES | VIT_PROBES),
    (lambda c: c["store"].update(parts=3), set()),
    (lambda c: c["probe"].update(checkpoint_every_batches=7), set()),
    # settings of the machine: they decide how bytes reach a probe, never its order or numbers
    (lambda c: c["probe"].update(ram_budget_mb=1024), set()),
    (lambda c: c["probe"].update(loader_mode="chunks"), set()),
    (lambda c: c["probe"].update(shuffle_window_chunks=4), LLAVA_PROBES | VIT_PROBES | {"report"}),
    (lambda c: c["report"].update(qualitative_images=2), {"report"}),
    # a stage's resolved device type, and its threads on the CPU (they change float sums)
    (lambda c: c.update(extract={"device": "cpu"}), set()),  # tiny-only: `auto` is cpu already
    (lambda c: c["probe"].update(threads=2), LLAVA_PROBES | VIT_PROBES | {"report"}),
    (lambda c: c["probe"].update(device="cuda"), LLAVA_PROBES | VIT_PROBES | {"report"}),
    (lambda c: c.update(extract={"threads": 2}),
     {"store:tiny_vit/none", "report"} | LLAVA_STORES | LLAVA_PROBES | VIT_PROBES),
    (lambda c: c["scan"].update(threads=2), SCANS | {"report"}),
    (lambda c: c["scan"].update(device="cuda"), SCANS | {"report"}),
    (lambda c: c["dataset"].update(geometry="center_crop"), set()),  # the default, spelled out
    (lambda c: c["models"]["tiny_vit"].update(geometry="pad"),
     {"data:64px_pad", "store:tiny_vit/none", "scan:tiny_vit/none", "report"} | VIT_PROBES),
    (lambda c: c["models"].update(tiny_vit_pad={**c["models"]["tiny_vit"], "geometry": "pad"}),
     {"data:64px_pad", "tiny:tiny_vit_pad", "store:tiny_vit_pad/none", "scan:tiny_vit_pad/none", "report"}
     | {p.replace("tiny_vit/", "tiny_vit_pad/") for p in VIT_PROBES}),
])
def test_each_edit_changes_exactly_what_it_shapes(demo, edit, expected):
    assert changed(demo, edit) == expected


def test_data_edits_change_everything_downstream(demo):
    everything = set(every_fingerprint(demo)) - {"tiny:tiny_vit", "tiny:tiny_llava"}
    assert changed(demo, lambda c: c["dataset"]["synthetic"].update(seed=1)) == everything
    assert changed(demo, lambda c: c["dataset"].update(max_images={"training": 10})) == everything
    pad = (everything - {"data:48px", "data:64px"}) | {"data:48px_pad", "data:64px_pad"}
    assert changed(demo, lambda c: c["dataset"].update(geometry="pad")) == pad


def test_real_dataset_content_changed_in_place_changes_the_data_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the digest cache lives in ./.snakemake/
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=3, validation=2, height=20, width=24)
    raw = {"dataset": {"root": str(root)}, "models": {"m": {"kind": "open_clip", "arch": "ViT-B-16-quickgelu",
                                                            "pretrained": "openai", "layers": [1]}}}
    cache = tmp_path / "digests.json"
    before = dataset_digest(root, {}, cache)
    assert dataset_digest(root, {}, cache) == before and cache.is_file()
    label = root / "annotations/validation/ADE_val_00000002.png"
    lp_fp.forget()
    first = lp_fp.data(lp_config.validate(raw), 224).hash
    data = bytearray(label.read_bytes())
    write_dataset(tmp_path / "other", seed=5, training=3, validation=2, height=20, width=24)
    label.write_bytes((tmp_path / "other/annotations/validation/ADE_val_00000002.png").read_bytes())
    assert bytes(data) != label.read_bytes()
    assert dataset_digest(root, {}, cache) != before
    lp_fp.forget()
    assert lp_fp.data(lp_config.validate(raw), 224).hash != first
    assert (tmp_path / ".snakemake/layerprobe/file-digests.json").is_file()
    # Only the first training image is read with max_images 1: later files do not matter.
    assert dataset_digest(root, {"training": 1, "validation": 1}, None) == dataset_digest(
        root, {"training": 1, "validation": 1}, cache)


def test_dry_run_without_data_has_a_fingerprint(tmp_path):
    raw = {"dataset": {"root": str(tmp_path / "absent")},
           "models": {"m": {"kind": "open_clip", "arch": "ViT-B-16-quickgelu", "pretrained": "openai", "layers": [1]}}}
    fp = lp_fp.data(lp_config.validate(raw), 224)
    assert fp.inputs["dataset.content"].startswith("unavailable")


def test_check_names_the_differing_keys(demo):
    cfg = lp_config.validate(demo)
    recorded = lp_fp.probe(cfg, "tiny_vit", "none", "layer_02").record()
    demo["probe"]["lr"] = 0.05
    current = lp_fp.probe(lp_config.validate(demo), "tiny_vit", "none", "layer_02")
    with pytest.raises(lp_fp.StaleResultError, match=r"metrics.json: .*probe.lr: 0.1 -> 0.05"):
        current.check(recorded, "metrics.json")
    with pytest.raises(lp_fp.StaleResultError, match="no fingerprint recorded"):
        current.check(None, "old.json")
    current.check(current.record(), "fresh.json")


def test_centre_crop_data_fingerprint_has_the_keys_it_always_had(demo):
    """Centre-crop stores made before geometries existed keep their fingerprints: no geometry key."""
    cfg = lp_config.validate(demo)
    keys = {"dataset.class_names", "dataset.max_images.training", "dataset.max_images.validation",
            "data.resolution", "version.data"} | set(lp_fp.dataset(cfg).inputs)
    assert set(lp_fp.data(cfg, 64).inputs) == keys
    assert lp_fp.data(cfg, 64, "center_crop") == lp_fp.data(cfg, 64)
    assert lp_fp.data(cfg, 64, "pad").inputs == {**lp_fp.data(cfg, 64).inputs, "data.geometry": "pad"}
    assert set(lp_fp.report(cfg).inputs) >= {"data:48px", "data:64px"}


def _add_fills(*fills: str):
    return lambda c: c["models"]["tiny_llava"]["prompts"][1].update(category_fill=["dominant", *fills])


def _artefacts(store_id: str) -> set[str]:
    """A tiny_llava store's own artefacts: the store, its probes and its scan."""
    return ({f"store:tiny_llava/{store_id}", f"scan:tiny_llava/{store_id}"}
            | {f"probe:tiny_llava/{store_id}/{k}" for k in ("vision_01", "vision_02", "projector", "layer_00",
                                                           "layer_01", "layer_02")})


def test_adding_a_fill_leaves_the_oracle_and_every_other_store_alone(demo):
    demo["models"]["tiny_llava"]["prompts"][1].pop("category_fill", None)  # the oracle only
    assert changed(demo, _add_fills("shuffled")) == _artefacts("describe_category+shuffled") | {"report"}
    with_shuffled = copy.deepcopy(demo)
    _add_fills("shuffled")(with_shuffled)
    assert changed(with_shuffled, _add_fills("shuffled", "random", "none")) == \
        _artefacts("describe_category+random") | _artefacts("describe_category+none") | {"report"}


def test_a_store_records_its_own_fill_and_only_seeded_fills_the_seed(demo):
    _add_fills("shuffled", "random", "none")(demo)
    cfg = lp_config.validate(demo)
    inputs = {p: lp_fp.store(cfg, "tiny_llava", p).inputs for p in lp_config.prompt_ids(cfg["models"]["tiny_llava"])}
    fill, seed = "models.tiny_llava.category_fill", "models.tiny_llava.category_seed"
    assert {p: (i.get(fill), i.get(seed)) for p, i in inputs.items()} == {
        "describe": (None, None), "describe_category": ("dominant", None),
        "describe_category+shuffled": ("shuffled", 0), "describe_category+random": ("random", 0),
        "describe_category+none": ("none", None)}
    # Every fill of the prompt is conditioned on the same text, under the prompt's own id.
    assert {i["models.tiny_llava.prompts.describe_category.text"] for p, i in inputs.items() if p != "describe"} \
        == {demo["models"]["tiny_llava"]["prompts"][1]["text"]}
    # The seed reruns the seeded controls only.
    assert changed(demo, lambda c: c["models"]["tiny_llava"].update(category_seed=3)) == \
        _artefacts("describe_category+shuffled") | _artefacts("describe_category+random") | {"report"}
