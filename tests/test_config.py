"""Config validation: defaults filled, and every error names the offending key."""

import copy

import pytest
import yaml

from layerprobe import config as lp_config
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "config/demo.yaml").read_text())


def _bad(mutate):
    raw = copy.deepcopy(BASE)
    mutate(raw)
    with pytest.raises(lp_config.ConfigError) as err:
        lp_config.validate(raw)
    return str(err.value)


def test_real_and_demo_configs_validate_with_defaults():
    demo = lp_config.validate(BASE)
    assert demo["probe"]["weight_decay"] == 0.0001 and demo["store"]["shuffle_seed"] == 0
    real = lp_config.load(ROOT / "config/config.yaml")
    assert real["models"]["llava15_7b"]["layers"] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 31, 32]
    assert real["models"]["clip_b16"]["arch"].endswith("quickgelu")
    assert (demo["scan"]["holdout_fraction"], demo["scan"]["holdout_seed"]) == (0.25, 0)  # demo.yaml sets it
    assert (real["scan"]["holdout_fraction"], real["scan"]["holdout_seed"]) == (0.1, 0)  # the defaults


def test_unknown_key_is_named():
    assert "probe.epoch" in _bad(lambda c: c["probe"].update(epoch=3))
    assert "models.tiny_vit.layer" in _bad(lambda c: c["models"]["tiny_vit"].update(layer=[1]))


def test_negative_layer_is_named():
    assert "models.tiny_vit.layers[1]" in _bad(lambda c: c["models"]["tiny_vit"].update(layers=[0, -1]))


def test_layer_beyond_depth_is_named():
    msg = _bad(lambda c: c["models"]["tiny_vit"].update(layers=[5]))
    assert "models.tiny_vit.layers" in msg and "depth 4" in msg


def test_unknown_model_is_named():
    def mutate(c):
        m = c["models"]["tiny_vit"]
        del m["tiny"]
        m["arch"] = "ViT-Q-99"
    assert "models.tiny_vit.arch" in _bad(mutate)


def test_openai_weights_need_quickgelu():
    def mutate(c):
        m = c["models"]["tiny_vit"]
        del m["tiny"]
        m.update(arch="ViT-B-16", pretrained="openai")
    assert "quickgelu" in _bad(mutate)


def test_prompt_errors_are_named():
    prompts = lambda c: c["models"]["tiny_llava"]["prompts"]  # noqa: E731
    assert "prompts[1].text" in _bad(lambda c: prompts(c)[1].update(text="Find the {object}"))
    assert "used more than once" in _bad(lambda c: prompts(c)[1].update(id="describe"))
    msg = _bad(lambda c: c["dataset"].update(class_names=None))
    assert "dataset.class_names" in msg and "prompts[1].text" in msg


def test_prompt_text_errors_fail_at_dag_build_naming_the_key():
    """An unbalanced brace and the image token inside a prompt's text: ConfigErrors naming the
    prompt, not a bare ValueError at DAG build or a failure inside the extract job."""
    prompts = lambda c: c["models"]["tiny_llava"]["prompts"]  # noqa: E731
    msg = _bad(lambda c: prompts(c)[0].update(text="Describe the {category in it"))
    assert "models.tiny_llava.prompts[0].text" in msg and "malformed" in msg
    msg = _bad(lambda c: prompts(c)[0].update(text="Describe <image> in detail"))
    assert "models.tiny_llava.prompts[0].text" in msg and "<image>" in msg


def test_scan_layer_typos_fail_at_dag_build_naming_the_key():
    assert "scan.layers" in _bad(lambda c: c["scan"].update(layers=["layer_4"]))  # not a key at all
    msg = _bad(lambda c: c["scan"].update(layers=["layer_04", "layer_09"]))  # no model is 9 blocks deep
    assert "scan.layers" in msg and "layer_09" in msg
    msg = _bad(lambda c: c["scan"].update(layers=["vision_01"], models=["tiny_vit"]))  # a CLIP has no vision_NN
    assert "scan.layers" in msg
    lp_config.validate({**copy.deepcopy(BASE), "scan": {"enabled": True, "layers": ["layer_02", "vision_01"]}})


def test_a_budget_that_cannot_hold_one_shuffle_window_names_both_keys():
    msg = _bad(lambda c: c["probe"].update(ram_budget_mb=64, shuffle_window_chunks=5000))
    assert "probe.ram_budget_mb" in msg and "probe.shuffle_window_chunks" in msg and "at least" in msg


def test_several_prompts_with_image_first_format_is_an_error():
    msg = _bad(lambda c: c["models"]["tiny_llava"].update(prompt_format="USER: <image>\n{prompt} ASSISTANT:"))
    assert "models.tiny_llava.prompt_format" in msg and "identical" in msg


def test_scan_holdout_fraction_is_a_proper_share():
    for value in (0, 1, 1.5):
        assert "scan.holdout_fraction" in _bad(lambda c, v=value: c["scan"].update(holdout_fraction=v))


def test_missing_dataset_root_is_named():
    assert "dataset.root" in _bad(lambda c: c["dataset"].pop("root"))


def test_probe_seeds_add_probes_and_each_fingerprint_names_its_seed():
    from layerprobe import fingerprint as lp_fp

    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    one = lp_config.validate(demo)
    assert one["probe"]["seeds"] == [0]
    three = lp_config.validate({**demo, "probe": {**demo["probe"], "seeds": [0, 5, 7]}})
    model = three["models"]["tiny_vit"]
    ids = lp_config.probe_ids(model, three["probe"]["seeds"])
    assert ids[:5] == lp_config.probe_ids(model) and "layer_02-seed5" in ids and "layer_04-seed7" in ids
    assert len(ids) == 15
    # the first seed's probes are untouched by adding seeds; a further seed's probe trains with its own
    first = (lp_fp.probe(c, "tiny_vit", "none", "layer_02").hash for c in (three, one))
    assert len(set(first)) == 1
    assert lp_fp.probe(three, "tiny_vit", "none", "layer_02-seed5").inputs["probe.seed"] == 5
    with pytest.raises(lp_config.ConfigError, match=r"probe.seed: replaced by probe.seeds.*\[3\]"):
        lp_config.validate({**demo, "probe": {**demo["probe"], "seed": 3}})


def test_geometry_defaults_to_center_crop_and_a_model_may_override_it():
    demo = lp_config.validate(BASE)
    assert demo["dataset"]["geometry"] == "center_crop"
    assert {lp_config.geometry(demo, name) for name in demo["models"]} == {"center_crop"}
    assert lp_config.data_stores(demo) == [(48, "center_crop"), (64, "center_crop")]
    raw = copy.deepcopy(BASE)
    raw["models"]["tiny_vit_pad"] = {**copy.deepcopy(raw["models"]["tiny_vit"]), "geometry": "pad"}
    both = lp_config.validate(raw)
    assert lp_config.geometry(both, "tiny_vit_pad") == "pad" and lp_config.geometry(both, "tiny_vit") == "center_crop"
    assert lp_config.data_stores(both) == [(48, "center_crop"), (64, "center_crop"), (64, "pad")]
    assert lp_config.model_data_name(both, "tiny_vit_pad") == "64px_pad"
    assert lp_config.model_data_name(both, "tiny_vit") == "64px"  # the centre-crop store's name, as ever
    raw["dataset"]["geometry"] = "pad"
    inherited = lp_config.validate(raw)
    assert {lp_config.geometry(inherited, name) for name in inherited["models"]} == {"pad"}


def test_unknown_geometry_is_named():
    assert "dataset.geometry" in _bad(lambda c: c["dataset"].update(geometry="letterbox"))
    assert "models.tiny_vit.geometry" in _bad(lambda c: c["models"]["tiny_vit"].update(geometry="crop"))


def _llava(mutate) -> dict:
    raw = copy.deepcopy(BASE)
    mutate(raw["models"]["tiny_llava"])
    return lp_config.validate(raw)["models"]["tiny_llava"]


def test_category_fills_expand_into_store_ids():
    assert lp_config.prompt_ids(lp_config.validate(BASE)["models"]["tiny_llava"]) == [
        "describe", "describe_category", "describe_category+shuffled"]  # demo.yaml: the oracle and its control
    def one_fill_per_prompt(m):
        m["prompts"][1]["category_fill"] = "dominant"
    assert lp_config.prompt_ids(_llava(one_fill_per_prompt)) == ["describe", "describe_category"]

    # The model's list applies to every {category} prompt; a prompt without one keeps one store.
    def model_level(m):
        m["prompts"][1].pop("category_fill")
        m["category_fill"] = ["dominant", "shuffled", "random", "none"]
    model = _llava(model_level)
    ids = ["describe", "describe_category", "describe_category+shuffled", "describe_category+random",
           "describe_category+none"]
    assert lp_config.prompt_ids(model) == ids
    assert [lp_config.parse_store_id(i) for i in ids] == [
        ("describe", "dominant"), ("describe_category", "dominant"), ("describe_category", "shuffled"),
        ("describe_category", "random"), ("describe_category", "none")]
    assert [lp_config.store_id(*lp_config.parse_store_id(i)) for i in ids] == ids
    assert {lp_config.prompt_text(model, i) for i in ids[1:]} == {model["prompts"][1]["text"]}
    assert [lp_config.store_fill(model, i) for i in ids] == [None, "dominant", "shuffled", "random", "none"]
    # A prompt's own list wins over the model's; without dominant the plain id is not a store.
    model = _llava(lambda m: (m.update(category_fill="random"), m["prompts"][1].update(category_fill=["shuffled"])))
    assert lp_config.prompt_ids(model) == ["describe", "describe_category+shuffled"]
    assert lp_config.prompt_ids(lp_config.validate(BASE)["models"]["tiny_vit"]) == ["none"]
    with pytest.raises(ValueError, match="unknown category fill 'bogus'"):
        lp_config.parse_store_id("describe_category+bogus")


def test_category_fill_errors_name_the_key():
    prompts = lambda c: c["models"]["tiny_llava"]["prompts"]  # noqa: E731
    msg = _bad(lambda c: prompts(c)[0].update(category_fill=["dominant", "shuffled"]))
    assert "models.tiny_llava.prompts[0].category_fill" in msg and "no {category}" in msg
    msg = _bad(lambda c: c["models"]["tiny_llava"].update(category_fill="shufled"))
    assert "models.tiny_llava.category_fill" in msg and "'shuffled'" in msg  # the allowed values are listed
    assert "models.tiny_llava.prompts[1].category_fill[1]" in _bad(
        lambda c: prompts(c)[1].update(category_fill=["dominant", "oracle"]))
    assert "non-unique" in _bad(lambda c: prompts(c)[1].update(category_fill=["shuffled", "shuffled"]))
    assert "models.tiny_llava.category_seed" in _bad(lambda c: c["models"]["tiny_llava"].update(category_seed=-1))


def test_fills_of_one_prompt_with_image_first_format_are_an_error():
    def mutate(c):
        model = c["models"]["tiny_llava"]
        model.update(prompt_format="USER: <image>\n{prompt} ASSISTANT:", category_fill=["dominant", "shuffled"])
        del model["prompts"][0]
    msg = _bad(mutate)
    assert "models.tiny_llava.prompt_format" in msg and "identical" in msg
