"""The demo config end to end through Snakemake in a temporary directory."""

import json

import pandas as pd

from layerprobe import config as lp_config
from layerprobe.models.specs import requested_keys
from tests.conftest import ROOT


def test_demo_writes_report_and_parsable_metrics(demo_run):
    results = demo_run / "results/demo"
    html = (results / "report.html").read_text()
    assert "<html" in html.lower() and "mIoU" in html
    demo = lp_config.load(ROOT / "config/demo.yaml")
    for name, model in demo["models"].items():
        for prompt in lp_config.prompt_ids(model):  # every category fill's store too
            for key in requested_keys(model):
                folder = results / "probes" / name / prompt / key
                metrics = json.loads((folder / "metrics.json").read_text())
                assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["per_class_iou"]) == 150
                epochs = pd.read_csv(folder / "epochs.csv")
                assert list(epochs.epoch) == list(range(1, demo["probe"]["epochs"] + 1))
                columns = {"loss", "running_train_miou", "running_train_acc", "test_miou", "test_acc"}
                assert columns <= set(epochs.columns)


def test_demo_probe_reaches_miou_08(demo_run):
    """The synthetic classes are separable: a linear probe on tiny-ViT features must find them."""
    best = max(json.loads(p.read_text())["miou"]
               for p in (demo_run / "results/demo/probes/tiny_vit/none").glob("*/metrics.json"))
    assert best >= 0.8


def test_demo_epoch_log_line_has_the_users_shape(demo_run):
    log = (demo_run / "results/demo/logs/probe/tiny_vit/none/layer_02.log").read_text()
    import re

    assert re.search(r"Epoch 010 \| loss \d\.\d{4} \| running train mIoU \d\.\d{4} acc \d\.\d{4} \| "
                     r"test mIoU \d\.\d{4} acc \d\.\d{4}", log)


def test_demo_llava_probes_per_prompt_and_filled_prompts(demo_run):
    from layerprobe.features.store import open_store

    for prompt in ("describe", "describe_category", "describe_category+shuffled"):
        assert (demo_run / f"results/demo/probes/tiny_llava/{prompt}/layer_02/metrics.json").is_file()
    oracle, control = (open_store(demo_run / f"results/demo/features/tiny_llava/{p}.zarr")
                       for p in ("describe_category", "describe_category+shuffled"))
    filled = oracle.attrs["filled_prompts"]["validation"]
    assert len(filled) == len(oracle.attrs["validation_image_ids"])
    assert all(p.startswith("Describe the ") and "{category}" not in p for p in filled)
    # The control: same images, other images' classes, the same classes overall.
    shuffled = control.attrs["filled_prompts"]["validation"]
    assert control.attrs["category_fill"] == "shuffled" and shuffled != filled
    assert sorted(shuffled) == sorted(filled)


def test_demo_scan_ranks_layers_without_stores(demo_run):
    for prompt in ("describe", "describe_category", "describe_category+shuffled"):
        table = pd.read_csv(demo_run / f"results/demo/scan/tiny_llava/{prompt}.csv")
        assert {"layer", "best_lambda", "miou", "acc"} <= set(table.columns)
    table = pd.read_csv(demo_run / "results/demo/scan/tiny_vit/none.csv")
    assert len(table) == 5  # scan.layers: all -> layer_00..layer_04


def test_demo_scan_ranking_agrees_with_probes(demo_run):
    """Issue 7: the scan ranks layers as the cross-entropy probes do (Spearman >= 0.8 per model
    and prompt, on the layers both ran). The tiny models' `mixing` makes deeper layers lose
    spatial detail, so their layers truly differ."""
    from layerprobe.scan.agreement import rank_agreement

    rows = [json.loads(p.read_text()) for p in (demo_run / "results/demo/probes").glob("*/*/*/metrics.json")]
    probes = pd.DataFrame(rows)[["model", "prompt", "layer", "miou"]]
    for (model, prompt), group in probes.groupby(["model", "prompt"]):
        scan = pd.read_csv(demo_run / f"results/demo/scan/{model}/{prompt}.csv")
        assert rank_agreement(scan, group) >= 0.8, (model, prompt, scan, group)


def test_demo_report_has_an_interval_on_every_miou_and_delta(demo_run):
    """Issue 11: every probe's metrics.json brackets its mIoU; the report's tables carry the
    bounds, and every prompt delta has its paired interval."""
    from layerprobe.probing.metrics import ImageCounts

    results = demo_run / "results/demo"
    for path in results.glob("probes/*/*/*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert metrics["miou_low"] <= metrics["miou"] <= metrics["miou_high"], path
        counts = ImageCounts.load(path.with_name("per_image.npz"))
        assert abs(counts.miou() - metrics["miou"]) < 1e-9, path
    probes = pd.read_csv(results / "report_files/probes.csv")
    assert probes[["miou", "miou_low", "miou_high"]].notna().all().all()
    deltas = pd.read_csv(results / "report_files/prompt_deltas.csv")
    assert len(deltas) and deltas[["delta", "low", "high"]].notna().all().all()
    assert (deltas["low"] <= deltas["high"]).all()
    html = (results / "report.html").read_text()
    assert "best mIoU [95% CI]" in html and "paired bootstrap 95% interval" in html
    # the {category} oracle beside its shuffled control, and the oracle delta with its interval
    assert "describe_category (ground-truth class in the prompt)" in html and "Oracle check" in html
    oracle = pd.read_csv(results / "report_files/oracle_deltas.csv")
    assert set(oracle["base"]) == {"describe_category+shuffled"} and oracle[["low", "high"]].notna().all().all()
