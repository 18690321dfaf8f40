"""Any model by config: LLaVA specs from the checkpoint's own LlavaConfig, hub configs found
offline (local dir, weights cache, pinned), refusals at DAG build, and the real config's example
entries planned from their configs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from layerprobe import config as lp_config
from layerprobe.cli.fetch_configs import hub_models
from layerprobe.models.backbones.llava import LlavaBackbone
from layerprobe.models.layers import layer_key
from layerprobe.models.specs import UnknownModel, model_spec
from layerprobe.models.specs.hub import pinned_dir
from layerprobe.models.tiny.llava import build_tiny_llava
from layerprobe.plan import estimates as lp_plan
from tests.conftest import ROOT
from tests.test_llava import _reference

WIDE = {"image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 2, "text_width": 48,
        "text_layers": 3, "heads": 2, "seed": 1}


@pytest.fixture(scope="module")
def wide_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaVA whose LLM (48 wide) is wider than its vision tower (32): a width the demo lacks."""
    return build_tiny_llava(tmp_path_factory.mktemp("wide_llava") / "model", **WIDE)


def _llava(hub_id: str, **extra) -> dict:
    return {"kind": "llava", "hub_id": hub_id, "layers": [1], "prompts": [{"id": "d", "text": "Describe"}], **extra}


def test_llava_spec_is_read_from_its_saved_config(wide_llava: Path) -> None:
    spec = model_spec("wide", _llava(str(wide_llava)))
    assert (spec.depth, spec.dim, spec.vision_depth, spec.vision_dim) == (3, 48, 2, 32)
    assert (spec.image_size, spec.patch_size, spec.has_cls) == (32, 8, False)
    backbone = LlavaBackbone("wide", str(wide_llava), device="cpu")
    assert backbone.dims() == spec.dims() and backbone.grid == spec.grid


def test_llava_with_another_llm_width_extracts_the_library_hidden_states(wide_llava: Path) -> None:
    backbone = LlavaBackbone("wide", str(wide_llava), device="cpu")
    image = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    keys = [layer_key(0), layer_key(1), layer_key(3)]
    tokens, cls = backbone.extract(image, ["Describe the wall"], keys)
    reference = _reference(backbone, image[0], "Describe the wall")
    assert cls == {}
    for key in keys[:2]:
        assert tokens[key].shape == (1, 16, 48)
        torch.testing.assert_close(tokens[key][0], reference[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[layer_key(3)][0], reference["last_pre_norm"], atol=1e-5, rtol=1e-5)


def test_real_llava_specs_come_from_the_pinned_configs() -> None:
    seven = model_spec("m", _llava("llava-hf/llava-1.5-7b-hf"))
    assert (seven.depth, seven.dim, seven.vision_depth, seven.vision_dim, seven.image_size, seven.grid) == \
        (32, 4096, 24, 1024, 336, 24)
    assert seven.params == pytest.approx(7.063e9, rel=0.002)  # transformers' count of LlavaForConditionalGeneration
    thirteen = model_spec("m", _llava("llava-hf/llava-1.5-13b-hf"))
    assert (thirteen.depth, thirteen.dim) == (40, 5120)


def _saved_config(tmp: Path, **changes) -> Path:
    raw = json.loads((pinned_dir("llava-hf/llava-1.5-7b-hf") / "config.json").read_text())
    raw.update(changes)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(raw))
    return tmp


@pytest.mark.parametrize("changes, expected", [
    ({"model_type": "llava_next", "image_grid_pinpoints": [[336, 672], [672, 336]]}, "anyres"),
    ({"image_grid_pinpoints": [[336, 672]]}, "not a fixed patch grid"),
    ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy 'full'"),
    ({"model_type": "idefics2"}, "not a LlavaConfig"),
])
def test_tiling_and_non_grid_checkpoints_are_refused(tmp_path: Path, changes: dict, expected: str) -> None:
    directory = _saved_config(tmp_path / "ckpt", **changes)
    with pytest.raises(UnknownModel, match="models.m.hub_id") as err:
        model_spec("m", _llava(str(directory)))
    assert expected in str(err.value)


def _cache(cache_dir: Path, hub_id: str, files: dict[str, dict]) -> None:
    """huggingface_hub's cache layout, as hf_hub_download (fetch-configs, fetch_weights) leaves it."""
    repo = cache_dir / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name, content in files.items():
        (snapshot / name).write_text(json.dumps(content))


def test_a_hub_config_in_the_weights_cache_is_found_offline(tmp_path: Path) -> None:
    raw = json.loads((pinned_dir("llava-hf/llava-1.5-7b-hf") / "config.json").read_text())
    raw["text_config"].update(hidden_size=2048, num_hidden_layers=16, intermediate_size=5504)
    _cache(tmp_path / "cache", "someone/llava-custom", {"config.json": raw})
    model = _llava("someone/llava-custom")
    with pytest.raises(UnknownModel) as err:  # not pinned, no cache given
        model_spec("custom", model)
    message = str(err.value)
    assert "models.custom.hub_id" in message and "layerprobe fetch-configs" in message
    spec = model_spec("custom", model, str(tmp_path / "cache"))
    assert (spec.depth, spec.dim) == (16, 2048)


def test_fetch_configs_lists_hub_models_only(tmp_path: Path) -> None:
    models, cache_dir = hub_models([str(ROOT / "config/config.yaml")])
    assert set(models) == {"llava15_7b", "llava15_7b_prompted"} and cache_dir == "results/weights/cache"
    demo, _ = hub_models([str(ROOT / "config/demo.yaml")])
    assert demo == {}  # tiny models are local directories


def _with_examples() -> dict:
    """config/config.yaml with its commented example models uncommented."""
    lines = (ROOT / "config/config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# >>> example models"))
    end = next(i for i, line in enumerate(lines) if line.strip().startswith("# <<< example models"))
    block = [line.replace("# ", "", 1) for line in lines[start + 1:end]
             if not line.strip().startswith("# ") or not line.strip()[2:3].isupper() and ":" in line]
    uncommented = lines[:start] + block + lines[end + 1:]
    return yaml.safe_load("\n".join(uncommented))


def test_config_examples_plan_from_their_configs_without_weights() -> None:
    raw = _with_examples()
    assert {"dinov2_l14", "clip_l14_laion", "siglip_b16", "llava15_13b"} <= set(raw["models"])
    config = lp_config.validate(copy.deepcopy(raw))
    specs = {name: lp_config.spec(config, name) for name in ("dinov2_l14", "clip_l14_laion", "siglip_b16",
                                                             "llava15_13b")}
    assert (specs["dinov2_l14"].depth, specs["dinov2_l14"].dim, specs["dinov2_l14"].image_size) == (24, 1024, 224)
    assert (specs["clip_l14_laion"].depth, specs["clip_l14_laion"].has_cls) == (24, True)
    assert specs["siglip_b16"].has_cls is False
    assert specs["llava15_13b"].depth == 40
    result = lp_plan.plan(config)
    assert {"dinov2_l14", "clip_l14_laion", "siglip_b16", "llava15_13b"} <= set(result.stores["model"])


def test_unknown_models_fail_validation_naming_the_key() -> None:
    raw = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    raw["models"]["extra"] = _llava("nobody/llava-missing")
    with pytest.raises(lp_config.ConfigError, match=r"models.extra.hub_id: config.json of 'nobody/llava-missing'"):
        lp_config.validate(copy.deepcopy(raw))
    raw["models"]["extra"] = {"kind": "open_clip", "arch": "ViT-Q-99", "pretrained": "openai", "layers": [1]}
    with pytest.raises(lp_config.ConfigError, match=r"models.extra.arch"):
        lp_config.validate(copy.deepcopy(raw))


@pytest.mark.slow
def test_dry_run_with_example_models(tmp_path: Path) -> None:
    """The real config plus its examples dry-runs on a machine with no data and no weights."""
    from tests.conftest import copy_repo, snakemake

    workdir = copy_repo(tmp_path / "repo")
    (workdir / "examples.yaml").write_text(yaml.safe_dump(_with_examples()))
    out = snakemake(workdir, "-n", "--configfile", "examples.yaml").stdout
    for path in ("results/probes/dinov2_l14/none/layer_24+cls/metrics.json",
                 "results/probes/clip_l14_laion/none/layer_12/metrics.json",
                 "results/probes/siglip_b16/none/layer_08/metrics.json",
                 "results/probes/llava15_13b/describe/layer_40/metrics.json"):
        assert path in out, path
    assert "results/weights/facebook--dinov2-large.json" in out  # staged by fetch_weights like LLaVA
