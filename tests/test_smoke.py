"""The real-size smoke run (config/smoke.yaml): the real architectures, random weights, a handful of
real-size images, through extract -> probe -> report on this machine.

Checks what tiny models cannot: the token counts and widths of ViT-B/16, ViT-L/14, ViT-L/14@336 and
of LLaVA-1.5-7B's vision tower, projector and 4096-wide LLM layers; that every layer's bytes on
disk equal `layerprobe plan`'s figure for that many images, exactly; and that no job's measured
peak RSS (its Snakemake benchmark) exceeds the memory it asks the scheduler for.

It runs in the demo's checkout, after the demo, as a user would (`make demo`, then the README's
smoke command): each config has its own results root, and the demo's files stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerprobe import config as lp_config
from layerprobe.features.store import open_store
from layerprobe.models.specs import model_spec, requested_keys
from layerprobe.plan.estimates import layer_bytes, requested
from layerprobe.report.benchmarks import read_benchmarks
from tests.conftest import snakemake

pytestmark = pytest.mark.slow

# (tokens, width) per layer key, as the real models give them.
EXPECTED = {
    "clip_b16": {"layer_01": (196, 768), "layer_12": (196, 768)},
    "clip_l14": {"layer_24": (256, 1024)},
    "clip_l14_336": {"layer_24": (576, 1024)},
    "llava15_7b": {"vision_23": (576, 1024), "projector": (576, 4096), "layer_00": (576, 4096),
                   "layer_02": (576, 4096)},
}


SMOKE = "results/smoke"  # config/smoke.yaml's results root


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke(demo_run: Path) -> tuple[Path, dict]:
    demo = _snapshot(demo_run / "results/demo")
    snakemake(demo_run, "--profile", "profiles/local", "--cores", "2", "--configfile", "config/smoke.yaml",
              timeout=1800)
    changed = {k for k, v in _snapshot(demo_run / "results/demo").items() if demo.get(k) != v}
    assert not changed and len(demo) > 100, f"the smoke run touched the demo's files: {sorted(changed)[:10]}"
    return demo_run, lp_config.load(demo_run / "config/smoke.yaml")


def _stores(config: dict):
    for name, model in config["models"].items():
        for prompt in lp_config.prompt_ids(model):
            yield name, prompt, model


def test_real_token_counts_and_widths(smoke):
    workdir, config = smoke
    for name, prompt, model in _stores(config):
        group = open_store(workdir / SMOKE / f"features/{name}/{prompt}.zarr")
        images = {s: len(group.attrs[f"{s}_image_ids"]) for s in ("training", "validation")}
        assert images == {"training": 2, "validation": 1}
        assert sorted(requested_keys(model)) == sorted(EXPECTED[name])
        for key, (tokens, width) in EXPECTED[name].items():
            for split, n in images.items():
                assert group[f"{split}/{key}"].shape == (n, tokens, width), (name, key)
                if model["kind"] == "open_clip":
                    assert group[f"{split}/{key}_cls"].shape == (n, width), (name, key)
        assert group.attrs["grid"] ** 2 == next(iter(EXPECTED[name].values()))[0]
    # LLaVA-1.5-7b's processor and ids: 576 image tokens per prompt, <image> = 32000, vocab 32064.
    saved = json.loads((workdir / SMOKE / "models/llava15_7b_2_layers/config.json").read_text())
    assert saved["image_token_index"] == 32000 and saved["text_config"]["vocab_size"] == 32064
    assert saved["text_config"]["hidden_size"] == 4096 and saved["text_config"]["intermediate_size"] == 11008
    assert saved["text_config"]["num_hidden_layers"] == 2 and saved["vision_config"]["num_hidden_layers"] == 24
    log = (workdir / SMOKE / "logs/extract/llava15_7b/describe.part0.log").read_text()
    assert "x 576 tokens" in log


def test_bytes_per_layer_equal_the_plan_exactly(smoke):
    workdir, config = smoke
    for name, prompt, model in _stores(config):
        spec = model_spec(name, model)
        store = workdir / SMOKE / f"features/{name}/{prompt}.zarr"
        for key in requested_keys(model):
            files = [p for split in ("training", "validation") for array in (key, f"{key}_cls")
                     for p in (store / split / array / "c").rglob("*") if p.is_file()]
            assert sum(p.stat().st_size for p in files) == layer_bytes(spec, key, 3), (name, key)


def test_every_job_stays_within_its_memory_request(smoke):
    workdir, config = smoke
    bench = read_benchmarks(workdir / SMOKE / "benchmarks", config)
    assert {"build_tiny_model", "prepare_store", "extract", "finalize_store", "probe", "report"} <= set(bench["rule"])
    over = bench[bench["max_rss"] > bench["mem_mb"]]
    assert over.empty, over[["rule", "job", "max_rss", "mem_mb"]].to_string()
    llava = bench[(bench["rule"] == "extract") & (bench["model"] == "llava15_7b")].iloc[0]
    assert llava["mem_mb"] == requested("extract", config, "llava15_7b")["mem_mb"] and llava["max_rss"] > 3000
