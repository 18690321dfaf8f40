"""Both geometries through Snakemake (tests/configs/geometry.yaml): a centre-crop run, then a pad
entry of the same model added. The addition reruns nothing of the centre crop; the pad probe is
also scored on the whole 40 x 48 original annotations; the report names both protocols."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from layerprobe.data.preprocess import ade20k
from layerprobe.probing.metrics import ImageCounts
from tests.conftest import ROOT, copy_repo, snakemake

BASE = yaml.safe_load((ROOT / "tests/configs/geometry.yaml").read_text())
CONFIG = "config/geometry.yaml"
pytestmark = pytest.mark.slow


def _write(workdir: Path, config: dict) -> None:
    (workdir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


def _planned_rules(workdir: Path) -> dict[str, set[str]]:
    out = snakemake(workdir, "-n", "--configfile", CONFIG).stdout
    jobs: dict[str, set[str]] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", out, re.M):
        wildcards = re.search(r"^    wildcards: (.*)$", match.group(2), re.M)
        jobs.setdefault(match.group(1), set()).add(wildcards.group(1) if wildcards else "")
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """Centre crop alone, run; then the pad entry added: its dry run, then the run."""
    workdir = copy_repo(tmp_path_factory.mktemp("geometry"))
    crop_only = copy.deepcopy(BASE)
    del crop_only["models"]["tiny_vit_pad"]
    _write(workdir, crop_only)
    snakemake(workdir, "--profile", "profiles/local", "--cores", "2", "--configfile", CONFIG)
    _write(workdir, BASE)
    planned = _planned_rules(workdir)
    snakemake(workdir, "--profile", "profiles/local", "--cores", "2", "--configfile", CONFIG)
    return workdir, planned


def test_adding_a_pad_entry_reruns_nothing_of_the_centre_crop(run):
    workdir, planned = run
    assert "preprocess" not in planned and planned["preprocess_pad"] == {"res=32"}
    assert not any("model=tiny_vit," in w or w.endswith("model=tiny_vit") for jobs in planned.values() for w in jobs)
    assert planned["probe"] == {"model=tiny_vit_pad, prompt=none, probe=layer_02"}
    assert "nothing to be done" in snakemake(workdir, "-n", "--configfile", CONFIG).stdout.lower()


def test_pad_probe_is_scored_on_the_whole_original_annotations(run):
    workdir, _ = run
    results = workdir / "results"
    pad = json.loads((results / "probes/tiny_vit_pad/none/layer_02/metrics.json").read_text())
    crop = json.loads((results / "probes/tiny_vit/none/layer_02/metrics.json").read_text())
    assert 0 < pad["whole_image_miou"] <= 1 and 0 < pad["whole_image_acc"] <= 1
    assert "whole_image_miou" not in crop
    counts = ImageCounts.load(results / "probes/tiny_vit_pad/none/layer_02/whole_image_per_image.npz")
    samples = {s.image_id: s for s in ade20k.list_samples(workdir / BASE["dataset"]["root"], "validation")}
    assert sorted(counts.ids) == sorted(samples)
    labelled = [int((ade20k.read_sample(samples[i])[1] != ade20k.IGNORE).sum()) for i in counts.ids]
    assert counts.label_pixels.tolist() == labelled  # 40 x 48 annotations, not the 32 px square
    assert np.isclose(counts.miou(), pad["whole_image_miou"])
    manifest = json.loads((results / "data/32px_pad.json").read_text())
    assert manifest["geometry"] == "pad" and "geometry" not in json.loads((results / "data/32px.json").read_text())


def test_report_names_both_protocols(run):
    workdir, _ = run
    html = (workdir / "results/report.html").read_text()
    assert "whole-image mIoU" in html and "<i>pad</i>" in html and "<i>centre crop</i>" in html
