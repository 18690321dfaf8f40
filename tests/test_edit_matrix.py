"""The config is the experiment: each edit reruns exactly the jobs it changes, and afterwards every
output equals what a from-scratch run with the edited config produces.

One small base run (tests/configs/edit_matrix.yaml). Per edit, the dry run's jobs on a copy of it
(.snakemake metadata included) equal the set written here. An edit changes the config, or files
the config names without changing it (weights replaced at the same path, a hub cache's main moved
to another commit). Then the edits are applied and run, in two groups that together hold every
edit (one Snakemake run plus a from-scratch run costs about a minute, so one pair per edit would
take 20): the store-layout edits (extend a store, new store, a {category} prompt with its control,
new probe variants, removal, scan settings, machine settings that rerun nothing) and the edits
that discard and redo (prompt text, the three kinds of weights, chunking, probe settings, data).
After each group's run a second dry run has nothing to do, and a from-scratch run of the edited
config in a fresh directory gives identical feature bytes, metrics, epochs.csv, predictions and
scan tables. Then a control fill added to a prompt that has run plans that control's jobs only.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.models.specs import requested_keys
from tests.conftest import ROOT, copy_repo, snakemake

BASE = yaml.safe_load((ROOT / "tests/configs/edit_matrix.yaml").read_text())
CONFIG = "config/edit_matrix.yaml"
Jobs = dict[str, set[str]]
# Weights the user brought (built by the `sources` fixture): what the weights edits replace.
VIT_WEIGHTS, LLAVA_DIR, ALT = "models/tiny_vit.pt", "models/tiny_llava", "models/alt"
HUB_REPO, COMMIT_A, COMMIT_B = "layerprobe-test/tiny-llava", "a" * 40, "b" * 40
HUB_FOLDER = "hubcache/models--layerprobe-test--tiny-llava"
SOURCES = ("models", "hubcache")

pytestmark = pytest.mark.slow


def run(workdir: Path, *args: str):
    return snakemake(workdir, "--profile", "profiles/local", "--cores", "2", "--configfile", CONFIG, *args)


def planned_jobs(workdir: Path, config: str = CONFIG) -> Jobs:
    """{rule: {wildcard values joined by '/'}} of a dry run ('' for a job without wildcards)."""
    out = snakemake(workdir, "-n", "--configfile", config).stdout
    jobs: Jobs = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", out, re.M):
        wildcards = re.search(r"^    wildcards: (.*)$", match.group(2), re.M)
        values = "/".join(kv.split("=", 1)[1] for kv in wildcards.group(1).split(", ")) if wildcards else ""
        jobs.setdefault(match.group(1), set()).add(values)
    return jobs


def write_config(workdir: Path, config: dict[str, Any]) -> None:
    (workdir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Expected job sets
# --------------------------------------------------------------------------------------------

def jobs(*parts: Jobs) -> Jobs:
    """Union of job sets, plus the report and the default target, which every edit reruns."""
    out: Jobs = {"report": {""}, "all": {""}}
    for part in parts:
        for rule, ids in part.items():
            out.setdefault(rule, set()).update(ids)
    return out


NOTHING: Jobs = {}  # an edit of a machine setting: not even the report reruns


def store(model: str, prompt: str) -> Jobs:
    ids = f"{model}/{prompt}"
    return {"prepare_store": {ids}, "extract": {f"{ids}/0", f"{ids}/1"}, "finalize_store": {ids}}


def probes(model: str, prompt: str, *names: str) -> Jobs:
    ids = {f"{model}/{prompt}/{n}" for n in names}
    return {"probe_fingerprint": set(ids), "probe": set(ids)}


def scan(model: str, prompt: str) -> Jobs:
    return {"scan": {f"{model}/{prompt}"}}  # the base config scans tiny_vit only


VIT, LLAVA, HUB = ("tiny_vit", "none"), ("tiny_llava", "describe"), ("hub_llava", "describe")
VIT_PROBES = probes(*VIT, "layer_01", "layer_03")
LLAVA_PROBES = probes(*LLAVA, "vision_02", "layer_01", "layer_03")
HUB_PROBES = probes(*HUB, "layer_01")
ALL_STORES_AND_PROBES = jobs(store(*VIT), store(*LLAVA), store(*HUB), VIT_PROBES, LLAVA_PROBES, HUB_PROBES)


def _add_prompt(c: dict) -> None:
    c["models"]["tiny_llava"]["prompts"].append({"id": "describe_category",
                                                 "text": "Describe the {category} in the image in detail"})


def _add_prompt_with_control(c: dict) -> None:
    """A {category} prompt with the oracle and its shuffled control: two stores from one entry."""
    c["models"]["tiny_llava"]["prompts"].append({"id": "find_category", "text": "Find the {category} in the image",
                                                 "category_fill": ["dominant", "shuffled"]})


def _new_data(c: dict) -> None:
    c["dataset"]["synthetic"]["seed"] = 1  # new images and labels under the same file names


def _replace_vit_weights(workdir: Path) -> None:
    """Other weights (another seed) written over the ViT's weights file; the config is unchanged."""
    shutil.copyfile(workdir / ALT / "tiny_vit.pt", workdir / VIT_WEIGHTS)


def _replace_llava_weights(workdir: Path) -> None:
    shutil.copyfile(workdir / ALT / "tiny_llava/model.safetensors", workdir / LLAVA_DIR / "model.safetensors")


def _move_hub_snapshot(workdir: Path) -> None:
    """A re-fetch moved the cache's main to another commit (its snapshot was fetched beside)."""
    (workdir / HUB_FOLDER / "refs/main").write_text(COMMIT_B)


@dataclass
class Edit:
    jobs: Jobs
    config: Callable[[dict], Any] | None = None  # edits the config dict
    files: Callable[[Path], None] | None = None  # edits files in a working directory


EDITS: dict[str, Edit] = {
    "add an LLM layer": Edit(jobs(store(*LLAVA), probes(*LLAVA, "layer_02")),
                             lambda c: c["models"]["tiny_llava"]["layers"].insert(1, 2)),
    "add a vision layer": Edit(jobs(store(*LLAVA), probes(*LLAVA, "vision_01")),
                               lambda c: c["models"]["tiny_llava"]["vision_layers"].insert(0, 1)),
    "remove a layer": Edit(jobs(), lambda c: c["models"]["tiny_vit"]["layers"].remove(1)),
    "add a prompt": Edit(jobs(store("tiny_llava", "describe_category"),
                              probes("tiny_llava", "describe_category", "vision_02", "layer_01", "layer_03")),
                         _add_prompt),
    "change a prompt's text": Edit(jobs(store(*LLAVA), LLAVA_PROBES),
                                   lambda c: c["models"]["tiny_llava"]["prompts"][0].update(
                                       text="Describe this picture")),
    "change probe.lr and epochs": Edit(jobs(VIT_PROBES, LLAVA_PROBES, HUB_PROBES),
                                       lambda c: c["probe"].update(lr=0.05, epochs=3)),
    "add a {category} prompt with its shuffled control": Edit(
        jobs(*(part for prompt in ("find_category", "find_category+shuffled")
               for part in (store("tiny_llava", prompt), probes("tiny_llava", prompt, "vision_02", "layer_01",
                                                                "layer_03")))),
        _add_prompt_with_control),
    "switch concat_cls to both": Edit(jobs(probes(*VIT, "layer_01+cls", "layer_03+cls")),
                                      lambda c: c["models"]["tiny_vit"].update(concat_cls=[False, True])),
    "change the scan's lambdas": Edit(jobs(scan(*VIT)), lambda c: c["scan"].update(lambdas=[0.01, 1.0])),
    "add a probe seed": Edit(jobs(probes(*VIT, "layer_01-seed3", "layer_03-seed3"),
                                  probes(*LLAVA, "vision_02-seed3", "layer_01-seed3", "layer_03-seed3"),
                                  probes(*HUB, "layer_01-seed3")),
                             lambda c: c["probe"].update(seeds=[0, 3])),
    "change dataset.max_images": Edit(jobs(ALL_STORES_AND_PROBES, {"preprocess": {"32"}}, scan(*VIT)),
                                      lambda c: c["dataset"].update(max_images={"training": 12})),
    "change images and labels under the same names": Edit(
        jobs(ALL_STORES_AND_PROBES, {"synthetic_dataset": {""}, "preprocess": {"32"}}, scan(*VIT)), _new_data),
    "replace the ViT's weights file": Edit(jobs(store(*VIT), VIT_PROBES, scan(*VIT)), files=_replace_vit_weights),
    "replace the LLaVA directory's weights": Edit(jobs(store(*LLAVA), LLAVA_PROBES), files=_replace_llava_weights),
    "move the hub snapshot to another commit": Edit(
        jobs(store(*HUB), HUB_PROBES, {"fetch_weights": {"layerprobe-test--tiny-llava"}}), files=_move_hub_snapshot),
    "change store.chunk_images": Edit(ALL_STORES_AND_PROBES, lambda c: c["store"].update(chunk_images=8)),
    # Settings of the machine: how bytes reach a probe, never its order or numbers.
    "raise probe.ram_budget_mb": Edit(NOTHING, lambda c: c["probe"].update(ram_budget_mb=1024)),
    "switch probe.loader_mode to resident": Edit(NOTHING, lambda c: c["probe"].update(loader_mode="resident")),
    # Extending a store masks its probes in Snakemake's needrun propagation; the fingerprint
    # files must still rerun every probe whose settings changed.
    "add a layer and change probe.lr at once": Edit(
        jobs(store(*LLAVA), VIT_PROBES, LLAVA_PROBES, HUB_PROBES, probes(*LLAVA, "layer_02")),
        lambda c: (c["models"]["tiny_llava"]["layers"].insert(1, 2), c["probe"].update(lr=0.05))),
}
GROUPS = {
    "layout edits": ["add an LLM layer", "add a vision layer", "remove a layer", "add a prompt",
                     "add a {category} prompt with its shuffled control", "switch concat_cls to both",
                     "change the scan's lambdas", "raise probe.ram_budget_mb", "switch probe.loader_mode to resident"],
    "discard-and-redo edits": ["change a prompt's text", "replace the ViT's weights file",
                               "replace the LLaVA directory's weights", "move the hub snapshot to another commit",
                               "change store.chunk_images", "change probe.lr and epochs", "change dataset.max_images",
                               "change images and labels under the same names"],
}
# Dry runs only: a combined edit, and a second seed, which would double every probe of the group's two
# runs (minutes of the suite) for what the dry run and tests/test_config.py's seed tests already show.
DRY_RUN_ONLY = {"add a layer and change probe.lr at once", "add a probe seed"}
assert {e for g in GROUPS.values() for e in g} | DRY_RUN_ONLY == set(EDITS)


def edited(*names: str) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    for name in names:
        if EDITS[name].config is not None:
            EDITS[name].config(config)
    return config


def edit_files(workdir: Path, *names: str) -> None:
    for name in names:
        if EDITS[name].files is not None:
            EDITS[name].files(workdir)


# --------------------------------------------------------------------------------------------
# Comparing two results trees
# --------------------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _attrs(path: Path) -> dict[str, Any]:
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    # Which arrays a store holds beyond those asked for depends on its history (removing a
    # layer deletes nothing); everything else must match.
    return {k: v for k, v in attrs.items() if k not in ("layers", "complete_layers", "dims")}


def assert_same_results(done: Path, scratch: Path, config: dict[str, Any]) -> None:
    cfg = lp_config.validate(config)
    for res in lp_config.resolutions(cfg):
        assert _files(done / f"results/data/{res}px.zarr") == _files(scratch / f"results/data/{res}px.zarr")
    for name, model in cfg["models"].items():
        for prompt in lp_config.prompt_ids(model):
            a, b = (w / f"results/features/{name}/{prompt}.zarr" for w in (done, scratch))
            assert _attrs(a) == _attrs(b), (name, prompt)
            arrays = [*requested_keys(model), "labels"] + [f"{k}_cls" for k in requested_keys(model)
                                                            if (b / "training" / f"{k}_cls").exists()]
            for split in ("training", "validation"):
                for key in arrays:
                    assert _files(a / split / key) == _files(b / split / key), (name, prompt, split, key)
            for probe in lp_config.probe_ids(model, cfg["probe"]["seeds"]):
                pa, pb = (w / f"results/probes/{name}/{prompt}/{probe}" for w in (done, scratch))
                ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (pa, pb))
                ma.pop("run"), mb.pop("run")
                assert ma == mb, (name, prompt, probe)
                assert (pa / "epochs.csv").read_bytes() == (pb / "epochs.csv").read_bytes(), (name, prompt, probe)
                with np.load(pa / "predictions.npz") as x, np.load(pb / "predictions.npz") as y:
                    assert np.array_equal(x["pred"], y["pred"]) and np.array_equal(x["ids"], y["ids"])
                with np.load(pa / "per_image.npz") as x, np.load(pb / "per_image.npz") as y:
                    assert all(np.array_equal(x[k], y[k]) for k in ("ids", "intersect", "union", "label_pixels"))
    for name, prompt in lp_config.scan_targets(cfg):
        for ext in ("csv", "json"):
            path = f"results/scan/{name}/{prompt}.{ext}"
            assert (done / path).read_bytes() == (scratch / path).read_bytes(), path


def assert_adding_a_fill_plans_only_its_store(done: Path, config: dict[str, Any]) -> None:
    """After a run with the oracle of describe_category (added by "add a prompt"), listing a
    control beside it plans that control's store and probes only: the oracle's store, probes
    and fingerprints are untouched."""
    more = copy.deepcopy(config)
    prompt = next(p for p in more["models"]["tiny_llava"]["prompts"] if p["id"] == "describe_category")
    prompt["category_fill"] = ["dominant", "random"]
    write_config(done, more)
    valid = lp_config.validate(more)
    layers = lp_config.probe_ids(valid["models"]["tiny_llava"], valid["probe"]["seeds"])  # the group's, seeds too
    try:
        assert planned_jobs(done) == jobs(store("tiny_llava", "describe_category+random"),
                                          probes("tiny_llava", "describe_category+random", *layers))
    finally:
        write_config(done, config)


# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The weights the base config names, and other weights for the replace edits: a tiny ViT
    saved as a file with its architecture beside it, a tiny LLaVA directory, and a hub cache
    with two snapshots of a tiny LLaVA (commits A and B, main at A)."""
    from layerprobe.models.tiny.llava import build_tiny_llava
    from layerprobe.models.tiny.openclip import build

    root = tmp_path_factory.mktemp("matrix_sources")
    vit = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "heads": 2, "mixing": 1, "seed": 0}
    llava = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, text_width=32, text_layers=3,
                 heads=2, mixing=1)
    for folder, seed in (("models", 0), (ALT, 1)):
        build("lp-matrix-vit", root / folder / "tiny_vit.pt", {**vit, "seed": seed})
        build_tiny_llava(root / folder / "tiny_llava", seed=seed, **llava)
    for commit, seed in ((COMMIT_A, 2), (COMMIT_B, 3)):
        build_tiny_llava(root / HUB_FOLDER / "snapshots" / commit, seed=seed, **llava)
    (root / HUB_FOLDER / "refs").mkdir()
    (root / HUB_FOLDER / "refs/main").write_text(COMMIT_A)
    return root


def workdir_with_sources(dest: Path, sources: Path) -> Path:
    """A clean working copy with the base's weights in place (the edits' files not applied)."""
    workdir = copy_repo(dest)
    for name in SOURCES:
        shutil.copytree(sources / name, workdir / name)
    return workdir


@pytest.fixture(scope="module")
def base(sources, tmp_path_factory) -> Path:
    workdir = workdir_with_sources(tmp_path_factory.mktemp("matrix_base"), sources)
    write_config(workdir, BASE)
    run(workdir)
    return workdir


@pytest.fixture(scope="module")
def plans(base, tmp_path_factory) -> dict[str, Jobs]:
    """Every edit's dry run on a copy of the base run (.snakemake metadata included), two at a time:
    each is a Snakemake start-up and a DAG build, mostly one core. Config edits share one copy
    (a dry run changes nothing; each reads its own config file); a file edit gets a copy of its own."""
    root = tmp_path_factory.mktemp("matrix_plans")
    shared = root / "shared"
    shutil.copytree(base, shared, symlinks=True)

    def plan(item: tuple[int, str]) -> Jobs:
        index, name = item
        workdir = shared
        if EDITS[name].files is not None:
            workdir = root / f"edit{index}"
            shutil.copytree(base, workdir, symlinks=True)
            edit_files(workdir, name)
        config = f"config/edit_matrix.{index}.yaml"
        (workdir / config).write_text(yaml.safe_dump(edited(name), sort_keys=False))
        return planned_jobs(workdir, config)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(EDITS, pool.map(plan, enumerate(EDITS))))


# A checkpoint left by a killed probe made under other settings, planted in each group at a
# probe that group reruns or adds: it must be discarded (its log names the differing key), never resumed.
STALE = {"discard-and-redo edits": ("tiny_vit", "none", "layer_03", lambda c: None, "probe.lr: 0.1 -> 0.05"),
         "layout edits": ("tiny_llava", "describe", "layer_02", lambda c: c["probe"].update(lr=0.3),
                          "probe.lr: 0.3 -> 0.1")}


@pytest.mark.parametrize("group", list(GROUPS))
def test_edited_run_equals_a_from_scratch_run(base, sources, tmp_path, group, monkeypatch):
    config = edited(*GROUPS[group])
    done = tmp_path / "incremental"
    shutil.copytree(base, done, symlinks=True)
    monkeypatch.chdir(done)  # the config names its weights relative to the working directory
    write_config(done, config)
    edit_files(done, *GROUPS[group])
    model, prompt, probe, other, named = STALE[group]
    stale = done / f"results/checkpoints/{model}/{prompt}/{probe}.pt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    old_config = copy.deepcopy(BASE if group == "discard-and-redo edits" else config)
    other(old_config)
    old = lp_fp.probe(lp_config.validate(old_config), model, prompt, probe)
    torch.save({"fingerprint": old.record(), "epoch": 1, "batch": 0}, stale)
    run(done)
    assert planned_jobs(done) == {}, "a second run still has work: the edits did not converge"
    assert not stale.exists()
    log = (done / f"results/logs/probe/{model}/{prompt}/{probe}.log").read_text()
    assert "discarding checkpoint" in log and named in log and "resumed" not in log
    scratch = workdir_with_sources(tmp_path / "scratch", sources)
    write_config(scratch, config)
    edit_files(scratch, *GROUPS[group])
    run(scratch)
    assert_same_results(done, scratch, config)
    if group == "layout edits":
        assert_adding_a_fill_plans_only_its_store(done, config)
    if group == "discard-and-redo edits":
        # --forcerun of a finished probe after its settings changed: it starts from epoch 1 (its
        # checkpoint is gone; one of other settings would be discarded) and matches scratch.
        probe = "results/probes/tiny_vit/none/layer_03"
        run(done, "--forcerun", f"{probe}/metrics.json")
        assert (done / probe / "epochs.csv").read_bytes() == (scratch / probe / "epochs.csv").read_bytes()
        assert "resumed" not in (done / "results/logs/probe/tiny_vit/none/layer_03.log").read_text()


# Last in the module: quick once `plans` is made, so the suite's scheduler (tests/conftest.py) hands
# the worker its next module while these run, not while a group run does.
@pytest.mark.parametrize("edit", list(EDITS))
def test_dry_run_plans_exactly_the_jobs_an_edit_changes(plans, edit):
    assert plans[edit] == EDITS[edit].jobs
