"""The plan: bytes by arithmetic, dataset sizes, RAM/GPU-hours per rule, quota warning, scan savings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from layerprobe import config as lp_config
from layerprobe import resources
from layerprobe.cli import plan as plan_cli
from layerprobe.models.specs import model_spec
from layerprobe.plan import estimates as lp_plan
from layerprobe.plan import text as plan_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_config() -> dict:
    config = lp_config.load(ROOT / "config" / "config.yaml")
    config["dataset"]["root"] = "/nonexistent/ADEChallengeData2016"  # sizes: ADE20K's published numbers
    return config


def test_one_llava_layer_is_95_gb(real_config: dict) -> None:
    """LLaVA-7B, training split, one LLM layer: 20210 x 576 x 4096 x 2 B = 95.36 GB."""
    spec = model_spec("llava15_7b", real_config["models"]["llava15_7b"])
    assert lp_plan.layer_bytes(spec, "layer_16", 20210) == 20210 * 576 * 4096 * 2
    assert lp_plan.layer_bytes(spec, "layer_16", 20210) / 1e9 == pytest.approx(95.36, abs=0.005)
    result = lp_plan.plan(real_config)
    row = result.stores.set_index(["model", "prompt"]).loc[("llava15_7b", "describe")]
    assert row["largest_layer_training_bytes"] == 20210 * 576 * 4096 * 2
    assert result.sizes == {"training": 20210, "validation": 2000}
    assert "ADE20K" in result.size_source and "not found" in result.size_source


def test_store_bytes_add_cls_and_labels(real_config: dict) -> None:
    """CLIP stores carry a CLS array per layer; every store carries uint8 labels at input size."""
    result = lp_plan.plan(real_config, {"training": 10, "validation": 2})
    row = result.stores.set_index(["model", "prompt"]).loc[("clip_b16", "none")]
    layers = len(real_config["models"]["clip_b16"]["layers"])
    per_image = layers * (196 * 768 * 2 + 768 * 2) + 224 * 224
    assert row["bytes"] == 12 * per_image
    total = result.stores["bytes"].sum() + lp_plan.data_store_bytes(real_config, result.sizes)
    assert result.totals["disk_bytes"] == total


def test_max_images_caps_sizes(real_config: dict) -> None:
    config = copy.deepcopy(real_config)
    config["dataset"]["max_images"] = {"training": 1000, "validation": None}
    assert lp_plan.plan(config).sizes == {"training": 1000, "validation": 2000}


def test_sizes_counted_from_the_data_dir(tmp_path: Path, real_config: dict) -> None:
    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        for i in range(n):
            (root / "images" / split / f"ADE_{i}.jpg").touch()
    config = copy.deepcopy(real_config)
    config["dataset"]["root"] = str(root)
    sizes, source = lp_plan.find_dataset_sizes(config)
    assert sizes == {"training": 3, "validation": 2} and str(root) in source


def test_rules_use_the_requested_resources(real_config: dict) -> None:
    result = lp_plan.plan(real_config)
    rules = result.rules.set_index(["rule", "model"])
    probe = rules.loc[("probe", "llava15_7b")]
    assert probe["mem_mb_per_job"] == real_config["probe"]["ram_budget_mb"] + resources.OVERHEAD_MB
    assert probe["jobs"] == 13  # 11 LLM layers + vision_23 + projector
    extract = rules.loc[("extract", "llava15_7b_prompted")]
    # Three prompts, two of them with a shuffled control: five stores.
    assert lp_config.prompt_ids(real_config["models"]["llava15_7b_prompted"]) == [
        "describe", "describe_category", "describe_category+shuffled", "imagine_category", "imagine_category+shuffled"]
    assert extract["jobs"] == 5 * real_config["store"]["parts"]
    assert extract["mem_mb_per_job"] == 8192 and extract["gpus_per_job"] == 1
    assert result.totals["gpu_hours"] == pytest.approx(result.rules["gpu_hours"].sum())
    assert (result.rules["gpu_hours"] >= 0).all()


def test_quota_warning(real_config: dict) -> None:
    assert not [w for w in lp_plan.plan(real_config).warnings if "disk_quota_gb" in w]  # 3.3 TB < 5000 GB
    config = copy.deepcopy(real_config)
    config["store"]["disk_quota_gb"] = 1000
    warnings = lp_plan.plan(config).warnings
    assert any("disk_quota_gb = 1000 GB" in w for w in warnings)


def test_scan_savings(real_config: dict) -> None:
    result = lp_plan.plan(real_config)
    scan = result.scan.set_index(["model", "prompt"]).loc[("llava15_7b", "describe")]
    spec = model_spec("llava15_7b", real_config["models"]["llava15_7b"])
    assert scan["scanned_layers"] == len(spec.dims()) == 25 + 1 + 33
    images = sum(result.sizes.values())
    probed = sum(lp_plan.layer_bytes(spec, k, images) for k in
                 ["vision_23", "projector"] + [f"layer_{i:02d}" for i in real_config["models"]["llava15_7b"]["layers"]])
    assert scan["full_extraction_bytes"] - scan["bytes_saved_beyond_probed"] == probed
    config = copy.deepcopy(real_config)
    config["scan"]["enabled"] = False
    assert lp_plan.plan(config).scan.empty


def test_format_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config" / "config.yaml").read_text().replace("disk_quota_gb: 5000", "disk_quota_gb: 10"))
    assert plan_cli.main(["--configfile", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("Feature stores", "Per rule", "Layer scan", "Total disk", "Assumed throughputs", "WARNING"):
        assert text in out
    assert "TFLOP/s per A100-class GPU" in out  # the assumed throughput is stated
    with pytest.raises(SystemExit):
        bad = tmp_path / "bad.yaml"
        bad.write_text("dataset: {root: x}\nmodels: {m: {kind: nope, layers: [1]}}\n")
        plan_cli.main(["--configfile", str(bad)])


def test_plan_matches_demo_store_sizes(demo_results: Path) -> None:
    """The plan's bytes are what extraction wrote (plus Zarr metadata and progress markers)."""
    config = lp_config.load(demo_results / "config" / "demo.yaml")
    planned = lp_plan.plan(config).stores.set_index(["model", "prompt"])["bytes"]
    for (model, prompt), expected in planned.items():
        manifest = demo_results / "results/demo/features" / model / f"{prompt}.manifest.json"
        written = json.loads(manifest.read_text())["bytes"]
        assert expected <= written <= expected * 1.05 + 64_000, (model, prompt, expected, written)


def test_totals_are_sums_of_rows(real_config: dict) -> None:
    result = lp_plan.plan(real_config)
    # 224 px (CLIP B/16, L/14) and 336 px (L/14-336, LLaVA) data stores, 4 bytes per pixel
    assert result.totals["data_bytes"] == 22210 * (224 * 224 + 336 * 336) * 4
    assert result.totals["feature_bytes"] == result.stores["bytes"].sum()
    assert result.totals["ram_gb_hours"] == pytest.approx(
        (result.rules["hours"] * result.rules["mem_mb_per_job"] / 1024).sum())
    llava = result.rules.set_index(["rule", "model"]).loc[("extract", "llava15_7b")]
    model = real_config["models"]["llava15_7b"]
    rate = lp_plan.images_per_s(model_spec("llava15_7b", model), model)
    assert 10 < rate < 16  # 8.3 TFLOP per image at the assumed 109 TFLOP/s
    assert llava["hours"] == pytest.approx(22210 / rate / 3600)


def test_scan_groups_add_training_passes(real_config: dict) -> None:
    config = copy.deepcopy(real_config)
    config["scan"]["max_stats_mb"] = 1024  # LLaVA's 4096-wide statistics no longer fit together
    capped_scan = lp_plan.plan(config).scan.set_index(["model", "prompt"])
    free_scan = lp_plan.plan(real_config).scan.set_index(["model", "prompt"])
    assert free_scan.loc[("llava15_7b", "describe"), "training_passes"] == 1
    assert capped_scan.loc[("llava15_7b", "describe"), "training_passes"] > 1
    rules = lambda r: r.rules.set_index(["rule", "model"]).loc[("scan", "llava15_7b"), "hours"]  # noqa: E731
    assert rules(lp_plan.plan(config)) > rules(lp_plan.plan(real_config))


def test_readme_command_and_dry_run_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`layerprobe plan --configfile config/config.yaml`, as the README writes it, through the CLI."""
    from layerprobe import cli

    readme = (ROOT / "README.md").read_text()
    assert "layerprobe plan --configfile config/config.yaml" in readme
    assert cli.main(["plan", "--configfile", str(ROOT / "config" / "config.yaml"), "--training", "100"]) == 0
    out = capsys.readouterr().out
    assert "100 training + 2000 validation = 2100" in out
    line = plan_text.summary(lp_config.load(ROOT / "config" / "config.yaml"))
    assert "feature store(s)" in line and "GPU-hours" in line and "WARNING" not in line
    small = copy.deepcopy(lp_config.load(ROOT / "config" / "config.yaml"))
    small["store"]["disk_quota_gb"] = 100
    assert "WARNING" in plan_text.summary(small)
