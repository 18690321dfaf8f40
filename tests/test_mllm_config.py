"""Kind mllm at DAG build: what is refused (naming the key and the reason), what is allowed, and
the real config's multimodal examples read from their pinned configs, validated and planned
offline (their dry run: tests/test_workflow_mllm.py)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from layerprobe import config as lp_config
from layerprobe import plan as lp_plan
from layerprobe.models.tiny.mllm import build_tiny_mllm
from tests.conftest import ROOT
from tests.test_any_model import _with_examples

EXAMPLES = {"paligemma2_3b": (16, "prefix_lm", 3), "qwen25vl_7b": (12, "causal", 3),
            "internvl3_8b": (16, "causal", 1), "llava_ov_7b": (27, "causal", 1)}
ONE = [{"id": "describe", "text": "Describe the image in detail"}]
TWO = ONE + [{"id": "category", "text": "Describe the {category} in the image"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_mllm_config")
    return {f: build_tiny_mllm(root / f, f) for f in ("paligemma", "gemma3", "qwen2_vl", "internvl", "idefics3")}


def _validate(model: dict) -> dict:
    raw = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    raw["models"] = {"m": {"layers": [1], "prompts": ONE, **model}}
    return lp_config.validate(copy.deepcopy(raw))


def _refused(model: dict, *expected: str) -> str:
    with pytest.raises(lp_config.ConfigError) as err:
        _validate(model)
    message = str(err.value)
    for text in expected:
        assert text in message, message
    return message


@pytest.mark.parametrize("family,key,value,what", [
    ("idefics3", "do_image_splitting", True, "tiles"),
    ("internvl", "crop_to_patches", True, "crops plus a thumbnail"),
    ("gemma3", "do_pan_and_scan", True, "pan-and-scan"),
])
def test_tiling_left_on_is_refused_naming_the_key(tiny, family: str, key: str, value: bool, what: str) -> None:
    _refused({"kind": "mllm", "hub_id": str(tiny[family]), "processor_kwargs": {key: value}},
             f"models.m.processor_kwargs.{key}", what, "not one fixed grid")


def test_a_processor_that_resizes_is_refused(tiny) -> None:
    _refused({"kind": "mllm", "hub_id": str(tiny["internvl"]), "processor_kwargs": {"size": {"height": 32}}},
             "models.m.processor_kwargs.size", "off the labels")


@pytest.mark.parametrize("image_size,why", [(None, "required"), (100, "not a multiple of 28"),
                                            (28, "outside the processor's")])
def test_a_qwen_resolution_that_is_not_fixed_is_refused(tiny, image_size: int | None, why: str) -> None:
    model = {"kind": "mllm", "hub_id": str(tiny["qwen2_vl"])}
    if image_size is not None:
        model["image_size"] = image_size
    _refused(model, "config key models.m.image_size", why)
    assert lp_config.spec(_validate({**model, "image_size": 112}), "m").grid == 4


def test_image_size_is_for_qwen_only(tiny) -> None:
    _refused({"kind": "mllm", "hub_id": str(tiny["internvl"]), "image_size": 64}, "models.m.image_size", "112 px")
    _refused({"kind": "llava", "hub_id": str(tiny["internvl"]), "image_size": 64}, "models.m.image_size",
             "only for kind mllm")


def test_a_family_without_an_image_token_id_is_refused(tiny, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny["internvl"], tmp_path / "no_image_token")
    raw = json.loads((broken / "config.json").read_text())
    raw.pop("image_token_id")
    (broken / "config.json").write_text(json.dumps(raw))
    _refused({"kind": "mllm", "hub_id": str(broken)}, "models.m.hub_id", "no image token id", "image_token_id")


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    _refused({"kind": "mllm", "hub_id": str(tmp_path)}, "models.m.hub_id", "'blip-2'", "qwen2_5_vl")


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "internvl", "idefics3"])
def test_several_prompts_after_the_image_are_refused_where_image_tokens_cannot_see_them(tiny, family: str) -> None:
    model = {"kind": "mllm", "hub_id": str(tiny[family]), "prompts": TWO,
             **({"image_size": 112} if family == "qwen2_vl" else {})}
    _refused(model, "config key models.m.prompt_format", "chat template puts the image before the prompt",
             "identical features")
    _refused({**model, "prompt_format": "User: <image>\n{prompt}"}, "models.m.prompt_format")
    config = _validate({**model, "prompt_format": "User: {prompt}\n<image>"})  # prompt first: conditioned
    assert lp_config.prompt_ids(config["models"]["m"]) == ["describe", "category"]


def test_paligemma_prefix_lm_takes_several_prompts_after_the_image(tiny) -> None:
    config = _validate({"kind": "mllm", "hub_id": str(tiny["paligemma"]), "prompts": TWO,
                        "vision_layers": [1], "projector": True})
    spec = lp_config.spec(config, "m")
    assert (spec.image_attention, spec.grid, spec.vision_depth) == ("prefix_lm", 4, 2)
    assert "prompt_format" not in config["models"]["m"]  # the family's own format


def test_mllm_keys_are_refused_elsewhere(tiny) -> None:
    _refused({"kind": "mllm", "hub_id": str(tiny["paligemma"]), "tiny": {}}, "models.m.tiny", "not for kind mllm")
    _refused({"kind": "hf_vision", "hub_id": str(tiny["paligemma"]), "processor_kwargs": {}, "prompts": None},
             "models.m")


def test_the_real_config_examples_validate_and_plan_offline() -> None:
    """Their config.json and image-processor config are pinned in the package (specs/pinned)."""
    config = lp_config.validate(copy.deepcopy(_with_examples()))
    for name, (grid, attention, stores) in EXAMPLES.items():
        spec = lp_config.spec(config, name)
        assert (spec.kind, spec.grid, spec.image_attention) == ("mllm", grid, attention), name
        assert len(lp_config.prompt_ids(config["models"][name])) == stores
    assert lp_config.spec(config, "llava_ov_7b").image_size == 378  # 27 SigLIP patches of 14 px
    assert lp_config.spec(config, "qwen25vl_7b").reduction == 2
    planned = lp_plan.plan(config).stores
    assert set(EXAMPLES) <= set(planned["model"])
    assert set(planned[planned["model"] == "llava_ov_7b"]["tokens"]) == {729}


def test_smolvlm_is_read_from_its_config_without_its_processor(tmp_path: Path) -> None:
    """SmolVLM's processor needs num2words (not installed); its spec needs only the two JSON files."""
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMVisionConfig

    vision = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=512, patch_size=16)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       vocab_size=300)
    SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=299, scale_factor=4).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_image_size": {"longest_edge": 512}}))
    spec = lp_config.spec(_validate({"kind": "mllm", "hub_id": str(tmp_path)}), "m")
    assert (spec.image_size, spec.grid, spec.reduction, spec.patch_size) == (512, 8, 4, 64)
