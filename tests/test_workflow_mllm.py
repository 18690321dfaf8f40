"""Kind mllm through Snakemake: a standalone small config (synthetic data in the ADE20K layout, its
own results root, probes on the CPU, no scan) with tiny PaliGemma, Qwen2-VL and InternVL models
saved to directories and named by path, run from preprocessing to probe metrics and the report;
and the real config with its multimodal examples dry-runs offline (pinned configs, no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from layerprobe.features.store import read_attrs
from layerprobe.models.tiny.mllm import QWEN_IMAGE_SIZE, build_tiny_mllm
from tests.conftest import copy_repo, snakemake
from tests.test_any_model import _with_examples

pytestmark = pytest.mark.slow
ROOT_DIR = "results/mllm"
DESCRIBE = {"id": "describe", "text": "Describe the {category} in the image in detail"}
# One probe each: every job is a process, so the run stays short (the keys: tests/test_mllm.py).
PROBES = {"paligemma": ["layer_02"], "qwen2_vl": ["layer_02"], "internvl": ["layer_02"]}


def _config(models: dict[str, Path]) -> dict:
    return {
        "pathvars": {"results": ROOT_DIR},
        "dataset": {"root": f"{ROOT_DIR}/ADEChallengeData2016",
                    "synthetic": {"seed": 0, "training": 24, "validation": 8, "height": 96, "width": 128,
                                  "classes": 8}},
        "store": {"chunk_images": 8, "parts": 1},
        "models": {  # 112 px each: one data store
            "paligemma": {"kind": "mllm", "hub_id": str(models["paligemma"]), "layers": [2], "batch_size": 8,
                          "prompts": [DESCRIBE]},
            "qwen2_vl": {"kind": "mllm", "hub_id": str(models["qwen2_vl"]), "image_size": QWEN_IMAGE_SIZE,
                         "layers": [2], "batch_size": 8, "prompts": [DESCRIBE]},
            "internvl": {"kind": "mllm", "hub_id": str(models["internvl"]), "layers": [2], "batch_size": 8,
                         "prompts": [DESCRIBE]},
        },
        "probe": {"epochs": 2, "lr": 0.1, "batch_size": 8, "ram_budget_mb": 256, "device": "cpu", "threads": 1,
                  "checkpoint_every_batches": 2},
        "scan": {"enabled": False, "device": "cpu", "threads": 1},
        "extract": {"device": "cpu", "threads": 1},  # real (tiny) checkpoints, not tiny blocks: auto would be cuda
        "report": {"qualitative_images": 2},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_repo(tmp_path_factory.mktemp("mllm_workflow"))
    models = {f: build_tiny_mllm(workdir / "models" / f, f) for f in ("paligemma", "qwen2_vl", "internvl")}
    (workdir / "mllm.yaml").write_text(yaml.safe_dump(_config(models)))
    snakemake(workdir, "--profile", "profiles/local", "--cores", "2", "--configfile", "mllm.yaml")
    return workdir


def test_tiny_multimodal_llms_run_from_config_to_probe_metrics_and_report(run: Path) -> None:
    results = run / ROOT_DIR
    for model, probes in PROBES.items():
        for probe in probes:
            metrics = json.loads((results / "probes" / model / "describe" / probe / "metrics.json").read_text())
            assert 0.0 <= metrics["miou_low"] <= metrics["miou"] <= metrics["miou_high"] <= 1.0, (model, probe)
        attrs = read_attrs(results / f"features/{model}/describe.zarr")
        assert (attrs["grid"], attrs["tokens"]) == (4, 16), model
        assert "{category}" not in attrs["filled_prompts"]["validation"][0]  # filled per image
    assert [p.name for p in (results / "data").glob("*px.json")] == ["112px.json"]
    table = pd.read_csv(results / "report_files/probes.csv")
    for model, probes in PROBES.items():
        assert sorted(table[table["model"] == model]["probe"]) == sorted(probes), model
    html = (results / "report.html").read_text()
    assert "attention, paligemma (paligemma)" in html and "prefix-LM" in html
    assert "attention, qwen2_vl (qwen2_vl)" in html and "causal: image tokens see only" in html
    assert not (results / "weights").exists()  # local directories: nothing to fetch


def test_the_real_config_with_its_multimodal_examples_dry_runs_offline(tmp_path: Path) -> None:
    workdir = copy_repo(tmp_path / "repo")
    (workdir / "examples.yaml").write_text(yaml.safe_dump(_with_examples()))
    out = snakemake(workdir, "-n", "--configfile", "examples.yaml").stdout
    for path in ("results/probes/paligemma2_3b/describe_category+shuffled/layer_26/metrics.json",
                 "results/probes/qwen25vl_7b/describe/vision_32/metrics.json",
                 "results/probes/internvl3_8b/describe/projector/metrics.json",
                 "results/probes/llava_ov_7b/describe/layer_28/metrics.json",
                 "results/data/378px.json", "results/weights/Qwen--Qwen2.5-VL-7B-Instruct.json"):
        assert path in out, path
