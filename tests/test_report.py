"""The report: reading results, the layer axis, figures' data, resources, the HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerprobe import config as lp_config
from layerprobe import resources
from layerprobe.formatting import human_bytes
from layerprobe.plan import requested
from layerprobe.report import figures, qualitative, sections, style, tables
from layerprobe.report.axis import LayerAxis
from layerprobe.report.benchmarks import read_benchmarks
from layerprobe.report.collect import collect
from layerprobe.report.deltas import best_worst_classes, general_prompt, oracle_deltas, prompt_deltas
from layerprobe.scan.agreement import rank_agreement
from tests.fake_results import CLASSES, build_tree_report, fabricate, fake_config, tree_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_run(tmp_path: Path) -> tuple[dict, Path]:
    config = fake_config(tmp_path)
    return config, fabricate(tmp_path, config)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One fabricated run with its report, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("built")
    config = fake_config(root)
    results = fabricate(root, config)
    build_tree_report(config, results, results / "report.html")
    return config, results, (results / "report.html").read_text()


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

def test_report_is_self_contained(built: tuple[dict, Path, str]) -> None:
    _, results, html = built
    images = re.findall(r'<img src="([^"]+)"', html)
    pngs = sorted((results / "report_files").glob("*.png"))
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert len(images) == len(pngs)  # every saved figure is on the page
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    for anchor in ("summary", "prompts", "scan", "per-class", "qualitative", "curves", "resources", "facts"):
        assert f'<section id="{anchor}"' in html


def test_report_names_best_layers_and_facts(built: tuple[dict, Path, str]) -> None:
    _, _, html = built
    assert "layer_03" in html and "tiny_llava · describe_category" in html
    assert "Spearman" in html and "peak RSS" in html
    assert "chosen on held-out training images (10% of them" in html and "scored once" in html
    for package in ("torch", "transformers", "open_clip_torch", "zarr", "snakemake"):
        assert f"<th>{package}</th>" in html
    assert "git commit" in html and "prompt_format" in html  # run facts and the config


def test_partial_results_are_reported_not_fatal(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    missing = results / "probes" / "tiny_llava" / "describe" / "layer_02" / "metrics.json"
    missing.unlink()
    build_tree_report(config, results, results / "report.html")
    html = (results / "report.html").read_text()
    assert "Incomplete results" in html and str(missing) in html


def test_without_data_stores_qualitative_is_skipped(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    for manifest in (results / "data").glob("*.json"):
        manifest.unlink()
    build_tree_report(config, results, results / "report.html")
    html = (results / "report.html").read_text()
    assert "No predictions or data store found" in html
    assert list((results / "report_files").glob("per_class_*.png"))  # classes with an IoU instead


def test_no_probe_results_is_an_error(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    with pytest.raises(RuntimeError, match="no probe results"):
        build_tree_report(config, tmp_path / "results", tmp_path / "results" / "report.html")


# --------------------------------------------------------------------------------------------
# What the figures show
# --------------------------------------------------------------------------------------------

def test_summary_best_layer_by_miou(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    found = collect(config, tree_inputs(config, results))
    summary = tables.summary(found).set_index("model / prompt")
    for label, row in summary.iterrows():
        model, _, prompt = label.partition(" · ")
        prompt = prompt.split(" (")[0]  # "describe_category (ground-truth class in the prompt)"
        probes = found.probes[(found.probes["model"] == model) & (found.probes["prompt"] == (prompt or "none"))]
        assert row["best layer"] == probes.loc[probes["miou"].idxmax(), "layer"]
        best = row["best mIoU [95% CI]"]
        assert best.value == pytest.approx(probes["miou"].max()) and best.low < best.value < best.high
        runner_up = probes.sort_values("miou").iloc[-2]
        step = row["best − next best layer"]
        assert step.versus == runner_up["layer"] and step.delta == pytest.approx(best.value - runner_up["miou"])
        assert step.low <= step.high and str(step).startswith(f"{step.delta:+.4f} [")


def test_prompt_deltas_identical_before_the_llm(fake_run: tuple[dict, Path]) -> None:
    """Vision-tower and projector probes cannot depend on the prompt: grey 'identical' bars."""
    config, results = fake_run
    deltas = prompt_deltas(collect(config, tree_inputs(config, results)))
    assert set(deltas["prompt"]) == {"describe_category"} and set(deltas["base"]) == {"describe"}
    reordered = {**config["models"]["tiny_llava"], "prompts": config["models"]["tiny_llava"]["prompts"][::-1]}
    assert general_prompt(reordered) == "describe"  # the prompt without {category}, wherever it is
    before = deltas[deltas["segment"] != "llm"]
    assert len(before) == 3 and all(style.delta_colour(d) == style.GREY for d in before["delta"])
    llm = deltas[(deltas["segment"] == "llm") & (deltas["layer"] != "layer_00")]
    assert llm["significant"].all() and (llm["low"] > 0).all() and (llm["low"] <= llm["high"]).all()
    assert all(style.delta_colour(d, s) == style.GREEN for d, s in zip(llm["delta"], llm["significant"]))
    assert style.delta_colour(-0.01) == style.RED
    # a difference whose interval contains 0 is never drawn as better or worse
    assert style.delta_colour(0.05, significant=False) == style.delta_colour(-0.05, significant=False) \
        == style.LIGHT_GREY


def test_layer_axis_orders_vision_projector_llm(fake_run: tuple[dict, Path]) -> None:
    config, _ = fake_run
    axis = LayerAxis.from_config(config)
    xs = [axis.position("tiny_llava", k) for k in ("vision_01", "vision_02", "projector", "layer_00", "layer_03")]
    assert xs == sorted(xs)
    left, right = axis.boundaries()
    assert xs[1] < left < xs[2] < right < xs[3]
    # CLIP (4 blocks) sits at relative depth inside LLaVA's 2-block vision segment
    assert axis.position("tiny_vit", "layer_04") == pytest.approx(2.0)
    assert axis.position("tiny_vit", "layer_02") == pytest.approx(1.0)
    ticks, labels = axis.ticks([("tiny_llava", "projector"), ("tiny_llava", "layer_02")])
    assert "proj" in labels and labels[-1] == "2"


def test_axis_without_llava_is_the_block_index(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    del config["models"]["tiny_llava"]
    axis = LayerAxis.from_config(config)
    assert not axis.segmented and axis.position("tiny_vit", "layer_03") == 3.0
    assert axis.ticks([("tiny_vit", f"layer_0{i}") for i in range(5)]) == ([0.0, 1.0, 2.0, 3.0, 4.0],
                                                                          ["0", "1", "2", "3", "4"])


def test_per_class_uses_classes_present_in_validation(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    found = collect(config, tree_inputs(config, results))
    frequency = qualitative.class_frequency(found, "32px")
    assert frequency is not None and frequency.sum() == pytest.approx(1.0)
    present = qualitative.present_classes(found, ("tiny_vit", "none"), frequency)
    assert sorted(present) == sorted(CLASSES)
    assert list(frequency[present]) == sorted(frequency[present], reverse=True)  # most frequent first
    info = best_worst_classes(found, ("tiny_vit", "none"), present, n=3)
    assert info["worst"][0] == ("sea", 0.0)  # the fabricated never-right class
    assert not {n for n, _ in info["best"]} & {n for n, _ in info["worst"]}


def test_qualitative_layers_and_palette(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    found = collect(config, tree_inputs(config, results))
    roles = qualitative.chosen_layers(found, ("tiny_vit", "none"))
    assert roles == [("shallowest", "layer_00"), ("best", "layer_03"), ("deepest", "layer_04")]
    colours = qualitative.palette()
    assert colours.shape == (150, 3) and len({tuple(c) for c in colours}) == 150
    assert np.array_equal(colours, qualitative.palette())  # fixed across reports
    sky, tree = colours[CLASSES[1]].astype(int), colours[CLASSES[3]].astype(int)  # ids 2 (sky), 4 (tree)
    assert sky[2] > max(sky[:2]) and tree[1] > max(tree[0], tree[2])  # sky blue, trees green
    rgb = qualitative.colourise(np.array([[0, 255]], np.uint8))
    assert tuple(rgb[0, 0]) == tuple(colours[0]) and tuple(rgb[0, 1]) == tuple(qualitative.IGNORE_COLOUR)


def test_scan_agreement(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    found = collect(config, tree_inputs(config, results))
    table = tables.scan_agreement(found).set_index("model / prompt")
    assert set(table.index) == {"tiny_vit", "tiny_llava · describe",
                                "tiny_llava · describe_category (ground-truth class in the prompt)"}
    assert (table["Spearman ρ"] > 0.5).all()  # the fabricated scan follows the probes' profile
    assert table.loc["tiny_llava · describe", "scanned layers"] == 8  # every key, vision_00 included
    # rank_agreement against pandas' own ranking and correlation.
    on = ["model", "prompt", "layer"]
    both = found.scan[on + ["miou"]].merge(found.probes[on + ["miou"]], on=on).dropna()
    assert rank_agreement(found.scan, found.probes) == pytest.approx(both["miou_x"].rank().corr(both["miou_y"].rank()))


def test_scan_disabled_drops_the_section(tmp_path: Path) -> None:
    config = fake_config(tmp_path, scan=False)
    results = fabricate(tmp_path, config)
    build_tree_report(config, results, results / "report.html")
    assert '<section id="scan"' not in (results / "report.html").read_text()


# --------------------------------------------------------------------------------------------
# Resources: requested (single source) vs measured (benchmarks)
# --------------------------------------------------------------------------------------------

def test_requested_resources_follow_the_config() -> None:
    config = lp_config.load(ROOT / "config" / "config.yaml")
    probe_mb = config["probe"]["ram_budget_mb"] + resources.OVERHEAD_MB
    assert requested("probe", config, "llava15_7b")["mem_mb"] == probe_mb
    assert requested("extract", config, "llava15_7b")["mem_mb"] == 8192
    assert requested("extract", config, "clip_l14")["mem_mb"] == 4096
    assert requested("extract", config, "llava15_7b")["gpus"] == 1
    assert requested("probe", config, "llava15_7b", attempt=3)["runtime_min"] == \
        3 * requested("probe", config, "llava15_7b")["runtime_min"]
    demo = lp_config.load(ROOT / "config" / "demo.yaml")  # CPU only: the scan's statistics are in host RAM
    assert resources.mem_mb("scan", demo, "tiny_llava") > resources.mem_mb("extract", demo, "tiny_llava")
    assert requested("scan", demo, "tiny_llava")["gpus"] == 0
    smoke = lp_config.load(ROOT / "config" / "smoke.yaml")  # CPU: weights in host RAM, sized by the model
    assert requested("extract", smoke, "llava15_7b")["mem_mb"] > requested("extract", smoke, "clip_l14")["mem_mb"] \
        > requested("extract", smoke, "clip_b16")["mem_mb"] > requested("extract", demo, "tiny_vit")["mem_mb"]


def test_read_benchmarks(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    bench = read_benchmarks(results / "benchmarks", config)
    assert {"synthetic_dataset", "preprocess", "extract", "probe", "scan", "finalize_store"} <= set(bench["rule"])
    probe = bench[bench["rule"] == "probe"]
    assert (probe["model"].isin(["tiny_vit", "tiny_llava"])).all()
    # On the CPU a probe also asks for its step's logits (resources.probe_step_mb), per model.
    assert (probe["mem_mb"] == [config["probe"]["ram_budget_mb"] + resources.OVERHEAD_MB
                                + resources.probe_step_mb(config, m) for m in probe["model"]]).all()
    assert set(bench.loc[bench["rule"] == "extract", "job"]) >= {"tiny_vit/none.part0", "tiny_llava/describe.part1"}
    too_short = (bench["rule"] == "scan") & (bench["job"] == "tiny_vit/none")
    assert bench.loc[too_short, "max_rss"].isna().all()  # "NA": too short to sample
    one = pd.read_csv(results / "benchmarks" / "probe" / "tiny_vit" / "none" / "layer_02.tsv", sep="\t")
    row = bench[(bench["rule"] == "probe") & (bench["job"] == "tiny_vit/none/layer_02")].iloc[0]
    assert row["max_rss"] == pytest.approx(one["max_rss"].iloc[0]) and row["s"] == pytest.approx(one["s"].iloc[0])
    usage = tables.resources_table(collect(config, tree_inputs(config, results))).set_index("rule")
    assert usage.loc["probe", "jobs"] == len(probe)
    assert usage.loc["probe", "peak / requested"] == pytest.approx(probe["max_rss"].max() / probe["mem_mb"].max())
    assert usage.loc["probe", "billing/job requested"] == probe["cpus"].max()  # no weights: the CPUs
    assert usage.loc["probe", "billing-hours requested"] == pytest.approx((probe["cpus"] * probe["s"]).sum() / 3600)


def test_store_sizes_measured_and_planned(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    sizes = tables.store_sizes(collect(config, tree_inputs(config, results))).set_index("store")
    manifests = list((results / "features").rglob("*.manifest.json"))
    data = list((results / "data").glob("*px.json"))
    assert sizes.index[-1] == "total" and len(sizes) == len(manifests) + len(data) + 1
    assert "features/tiny_llava/describe_category.zarr" in sizes.index and "data/32px.zarr" in sizes.index
    # no feature store on disk here: the manifest's number is shown
    assert sizes.loc["features/tiny_vit/none.zarr", "size on disk"] == human_bytes(123_456 * 5)
    # the data store exists: measured from its files, compared with the plan's uint8 arithmetic
    on_disk = sum(f.stat().st_size for f in (results / "data" / "32px.zarr").rglob("*") if f.is_file())
    assert sizes.loc["data/32px.zarr", "size on disk"] == human_bytes(on_disk)
    assert sizes.loc["data/32px.zarr", "planned"] == human_bytes((40 + 6) * 32 * 32 * 4)


def test_figures_are_not_empty(built: tuple[dict, Path, str]) -> None:
    """Every saved figure has drawn content (not a blank canvas with a title)."""
    from PIL import Image

    _, results, _ = built
    for png in sorted((results / "report_files").glob("*.png")):
        with Image.open(png) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
        inked = (grey < 200).mean()
        assert inked > 0.02, f"{png.name}: only {inked:.1%} of the pixels are drawn"


def test_diagnostics_flag_an_under_trained_probe(fake_run: tuple[dict, Path]) -> None:
    config, results = fake_run
    assert tables.diagnostics(collect(config, tree_inputs(config, results))) == []  # the fabricated probes are fine
    scan = results / "scan" / "tiny_vit" / "none.csv"
    frame = pd.read_csv(scan)
    frame.loc[frame["layer"] == "layer_02", "miou"] = 0.99  # the scan now beats the probe by far
    frame.to_csv(scan, index=False)
    found = collect(config, tree_inputs(config, results))
    warnings = tables.diagnostics(found)
    assert len(warnings) == 1 and "tiny_vit layer_02" in warnings[0]
    html = sections.summary_section(found, sections.FigureSink(results / "report_files"))
    assert html.count("<b>Check:</b>") == 1
    # a vision-tower probe that differs between prompts although its features cannot
    path = results / "probes" / "tiny_llava" / "describe_category" / "vision_02" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["miou"] -= 0.0003
    path.write_text(json.dumps(metrics))
    warnings = tables.diagnostics(collect(config, tree_inputs(config, results)))
    assert len(warnings) == 2 and "tiny_llava vision_02 (describe_category − describe: -0.0003)" in warnings[1]
    assert style.delta_text(-0.0003) == "-3e-04" and style.delta_text(0.0123) == "+0.012"
    assert style.delta_text(0.00005) == "identical"


def test_snakemake_report_of_the_demo(demo_run: Path, tmp_path: Path) -> None:
    """`snakemake --report` packs the marked outputs with their captions."""
    import zipfile

    from tests.conftest import snakemake

    out = tmp_path / "snakemake_report.zip"
    snakemake(demo_run, "--report", str(out))
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        # Snakemake's page is <name>/report.html; ours is inside it under data/raw/<hash>/report.html
        page = next(archive.read(n) for n in names if n.endswith("/report.html") and n.count("/") == 1).decode()
    figures_in_zip = {Path(n).name for n in names if n.endswith(".png")}
    assert {p.name for p in (demo_run / "results/demo/report_files").glob("*.png")} <= figures_in_zip
    assert sum(n.endswith("/report.html") for n in names) == 2  # Snakemake's page and ours, marked
    assert "A figure of the layerprobe report" in page and "Config: 2 model(s)" in page


def test_a_result_of_another_config_is_refused_naming_file_and_keys(fake_run: tuple[dict, Path]) -> None:
    """Results made before an edit never appear as current: the report names the file and keys."""
    from layerprobe.fingerprint import StaleResultError

    config, results = fake_run
    edited = json.loads(json.dumps(config))
    edited["probe"]["lr"] = config["probe"]["lr"] * 2
    with pytest.raises(StaleResultError, match=r"probes/tiny_vit/none/layer_00/metrics.json.*probe.lr"):
        build_tree_report(edited, results, results / "stale.html")
    assert not (results / "stale.html").exists()
    prompt = json.loads(json.dumps(config))
    prompt["models"]["tiny_llava"]["prompts"][0]["text"] = "Describe this picture"
    with pytest.raises(StaleResultError, match=r"data/48px.json|features/tiny_llava/describe.manifest.json"):
        build_tree_report(prompt, results, results / "stale.html")
    metrics = results / "probes/tiny_vit/none/layer_01/metrics.json"
    record = json.loads(metrics.read_text())
    record.pop("fingerprint")  # a result written by an older layerprobe, or by hand
    metrics.write_text(json.dumps(record))
    with pytest.raises(StaleResultError, match="layer_01/metrics.json.*no fingerprint recorded"):
        build_tree_report(config, results, results / "stale.html")


def test_cls_variant_is_its_own_line_and_the_report_shows_fingerprints(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    config["models"]["tiny_vit"]["concat_cls"] = [False, True]
    results = fabricate(tmp_path, config)
    found = collect(config, tree_inputs(config, results))
    vit = found.probes[found.probes["model"] == "tiny_vit"]
    assert set(vit["prompt"]) == {"none", "none+cls"} and len(vit) == 10
    assert set(vit[vit["prompt"] == "none+cls"]["probe"]) == {f"layer_{i:02d}+cls" for i in range(5)}
    assert style.store_label(("tiny_vit", "none+cls")) == "tiny_vit +CLS"
    build_tree_report(config, results, results / "report.html")
    html = (results / "report.html").read_text()
    assert "tiny_vit +CLS" in html
    assert all(fp in html for _, fp in found.fingerprints) and "layer_03+cls/metrics.json" in html


def test_several_probe_seeds_give_mean_and_sd_per_layer_and_seed_deltas(tmp_path: Path) -> None:
    """probe.seeds [0, 1, 2]: the first seed's probes stay the rows; every layer gets mean ± sd
    over the three, the prompt plot's rows carry one Δ per seed, and the page says so."""
    config = fake_config(tmp_path)
    config["probe"]["seeds"] = [0, 1, 2]
    results = fabricate(tmp_path, config)
    assert (results / "probes/tiny_vit/none/layer_02-seed2/metrics.json").is_file()
    found = collect(config, tree_inputs(config, results))
    assert not found.probes.duplicated(["model", "prompt", "layer"]).any() and (found.probes["seeds"] == 3).all()
    row = found.probes[(found.probes["model"] == "tiny_vit") & (found.probes["layer"] == "layer_02")].iloc[0]
    mious = [json.loads((results / f"probes/tiny_vit/none/{p}/metrics.json").read_text())["miou"]
             for p in ("layer_02", "layer_02-seed1", "layer_02-seed2")]
    assert row["miou"] == pytest.approx(mious[0]) and row["seed_mean"] == pytest.approx(np.mean(mious))
    assert row["seed_sd"] == pytest.approx(np.std(mious, ddof=1))
    deltas = prompt_deltas(found)
    assert deltas["seed_deltas"].map(len).eq(3).all()
    build_tree_report(config, results, results / "report.html")
    html = (results / "report.html").read_text()
    assert "best layer over seeds (mean ± sd)" in html and "(3 seeds)" in html
    csv = pd.read_csv(results / "report_files" / "probes.csv")
    assert {"miou_low", "miou_high", "seed_sd"} <= set(csv.columns) and (csv["miou_low"] <= csv["miou"]).all()


def test_oracle_is_labelled_and_its_shuffled_control_gives_the_oracle_delta(tmp_path: Path) -> None:
    """Issue 11: a {category} prompt filled with the ground truth is labelled as such; listed with
    its shuffled control, the report shows dominant − shuffled per layer with a paired interval."""
    config = fake_config(tmp_path)
    config["models"]["tiny_llava"]["category_fill"] = ["dominant", "shuffled"]
    results = fabricate(tmp_path, config)
    found = collect(lp_config.validate(config), tree_inputs(lp_config.validate(config), results))
    assert style.store_label(("tiny_llava", "describe_category"), found.config) \
        == "tiny_llava · describe_category (ground-truth class in the prompt)"
    assert style.store_label(("tiny_llava", "describe_category+shuffled"), found.config).endswith(
        "(control: another image's class)")
    assert style.store_label(("tiny_llava", "describe"), found.config) == "tiny_llava · describe"
    oracle = oracle_deltas(found)
    assert set(oracle["prompt"]) == {"describe_category"} and set(oracle["base"]) == {"describe_category+shuffled"}
    llm = oracle[(oracle["segment"] == "llm") & (oracle["layer"] != "layer_00")]
    assert len(llm) == 3 and (llm["delta"] > 0).all() and llm["significant"].all() and (llm["low"] > 0).all()
    assert (oracle[oracle["segment"] != "llm"]["delta"].abs() < style.IDENTICAL).all()
    build_tree_report(config, results, results / "report.html")
    html = (results / "report.html").read_text()
    assert "Oracle check" in html and "oracle effect at that layer (dominant − shuffled)" in html
    assert "ground-truth class in the prompt" in html and "control: another image&#x27;s class" in html
    assert len(pd.read_csv(results / "report_files/oracle_deltas.csv")) == len(oracle)


def test_prompt_bars_draw_an_interval_that_excludes_its_estimate(fake_run: tuple[dict, Path]) -> None:
    """A percentile interval can lie beside the point estimate (skewed resamples; it happened on
    the full config's fabricated results): the bars still draw, the interval from its bounds."""
    config, results = fake_run
    found = collect(config, tree_inputs(config, results))
    deltas = prompt_deltas(found)
    deltas.loc[deltas.index[-1], ["low", "high"]] = deltas["delta"].iloc[-1] + np.array([0.01, 0.02])
    fig = figures.prompt_comparison(found, deltas, "tiny_llava")
    assert fig.axes and fig.axes[0].collections  # bars and the interval lines


def test_run_facts_list_the_versions_results_were_made_with_and_warn_when_they_differ():
    from layerprobe.provenance import versions
    from layerprobe.report.facts import software_facts

    now = versions()
    same = {"results/probes/a/metrics.json": dict(now), "results/scan/a/none.json": dict(now)}
    facts, warnings = software_facts(same)
    assert ("torch (results)", f"{now['torch']} (2)") in facts and not warnings
    older = {**same, "results/probes/b/metrics.json": {**now, "torch": "2.13.0"}}
    facts, warnings = software_facts(older)
    assert len(warnings) == 1 and "torch 2.13.0 (1, e.g. results/probes/b/metrics.json)" in warnings[0]
    facts, warnings = software_facts({"results/probes/a/metrics.json": {**now, "zarr": "3.0.0"}})
    assert warnings == [f"results were made with zarr 3.0.0, this report with {now['zarr']}"]


def test_resources_bill_requested_vs_used(fake_run: tuple[dict, Path]) -> None:
    """Billing units per job as requested, and with the peak RSS as the memory (layerprobe.billing)."""
    config, results = fake_run
    config = {**config, "cluster": {"billing_weights": "CPU=3,Mem=1G", "max_tres": False}}
    bench = read_benchmarks(results / "benchmarks", config)
    asked, used = tables.billed(bench, config), tables.billed(bench, config, at_peak=True)
    assert (bench["cpus"] >= 1).all() and asked.notna().all()
    for row, a, u in zip(bench.itertuples(), asked, used):
        assert a == int(3 * row.cpus + row.mem_mb / 1024)
        assert np.isnan(u) if np.isnan(row.max_rss) else u == int(3 * row.cpus + np.ceil(row.max_rss) / 1024)
    config["cluster"] = {"billing_weights": None, "max_tres": False}  # SLURM's default: the CPUs
    assert (tables.billed(bench, config) == bench["cpus"]).all()
