"""New model kinds through Snakemake: a tiny DINOv2 with registers and a tiny SigLIP, saved to
directories and named by path in a config overlay exactly as a hub id would be, run from
preprocessing to probe metrics. No code knows them: their specs come from their config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layerprobe.features.store import read_attrs
from layerprobe.models.tiny.hf_vision import build_dinov2, build_siglip
from tests.conftest import copy_repo, snakemake

pytestmark = pytest.mark.slow
TARGETS = ["results/demo/probes/dino/none/layer_02/metrics.json",
           "results/demo/probes/dino/none/layer_03+cls/metrics.json",
           "results/demo/probes/siglip/none/layer_01/metrics.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_repo(tmp_path_factory.mktemp("any_model"))
    dino = build_dinov2(workdir / "models" / "dino", registers=4, image_size=32, patch_size=8, config_image_size=40)
    siglip = build_siglip(workdir / "models" / "siglip", image_size=32, patch_size=8)
    overlay = {"models": {
        "dino": {"kind": "hf_vision", "hub_id": str(dino), "layers": [2, 3], "concat_cls": [False, True],
                 "batch_size": 8},
        "siglip": {"kind": "hf_vision", "hub_id": str(siglip), "layers": [1], "batch_size": 8}},
        # Not `tiny` blocks: `auto` would resolve to cuda. On the CPU, one thread per job, explicitly.
        **{stage: {"device": "cpu", "threads": 1} for stage in ("extract", "scan", "probe")}}
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    snakemake(workdir, *TARGETS, "--profile", "profiles/local", "--cores", "2", "--configfile", "config/demo.yaml",
              "overlay.yaml")
    return workdir


def test_hf_vision_models_run_from_config_alone(run: Path) -> None:
    for target in TARGETS:
        metrics = json.loads((run / target).read_text())
        assert 0.0 <= metrics["miou_low"] <= metrics["miou_high"] <= 1.0, target
    dino = read_attrs(run / "results/demo/features/dino/none.zarr")
    siglip = read_attrs(run / "results/demo/features/siglip/none.zarr")
    assert (dino["model"], dino["grid"], dino["tokens"], dino["has_cls"]) == ("dino", 4, 16, True)
    assert (siglip["grid"], siglip["has_cls"]) == (4, False)
    assert dino["dims"] == {"layer_02": 32, "layer_03": 32}
    # no hub, no fetch: local directories need no weights staging
    assert not (run / "results/demo/weights").exists()


def test_cls_probe_on_a_model_without_cls_fails_at_dag_build(run: Path) -> None:
    overlay = yaml.safe_load((run / "overlay.yaml").read_text())
    overlay["models"]["siglip"]["concat_cls"] = True
    (run / "bad.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(run, "-n", "--configfile", "config/demo.yaml", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "models.siglip.concat_cls" in proc.stderr + proc.stdout
