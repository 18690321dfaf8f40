"""A device and threads per stage, resolved from the config alone: requests, fingerprints, jobs."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from layerprobe import config as lp_config
from layerprobe import devices, resources
from layerprobe import fingerprint as lp_fp
from layerprobe.probing.settings import ProbeSettings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def real() -> dict:
    config = lp_config.load(ROOT / "config" / "config.yaml")
    config["dataset"]["root"] = "/nonexistent/ADEChallengeData2016"
    return config


@pytest.fixture(scope="module")
def demo() -> dict:
    return lp_config.load(ROOT / "config" / "demo.yaml")


def with_stages(config: dict, **stages: dict) -> dict:
    out = copy.deepcopy(config)
    for stage, values in stages.items():
        out[stage].update(values)
    return out


def test_auto_is_cuda_unless_every_model_is_tiny(real, demo):
    assert {s: devices.resolved(real, s) for s in devices.STAGES} == dict.fromkeys(devices.STAGES, "cuda")
    assert {s: devices.resolved(demo, s) for s in devices.STAGES} == dict.fromkeys(devices.STAGES, "cpu")
    mixed = copy.deepcopy(real)
    mixed["models"]["tiny_vit"] = demo["models"]["tiny_vit"]
    assert devices.resolved(mixed, "extract") == "cuda"  # one real model is enough


def test_a_gpu_only_where_a_stage_runs_on_cuda(real):
    cpu_probes = with_stages(real, probe={"device": "cpu"})
    assert [resources.gpus(r, cpu_probes) for r in ("extract", "scan", "probe")] == [1, 1, 0]
    cpu_forwards = with_stages(real, extract={"device": "cpu"}, scan={"device": "cpu"})
    assert [resources.gpus(r, cpu_forwards) for r in ("extract", "scan", "probe")] == [0, 0, 1]
    assert all(resources.gpus(r, real) == 0 for r in ("preprocess", "prepare_store", "finalize_store", "report"))


def test_threads_are_the_stage_setting_or_a_default_by_device(real, demo):
    assert [resources.threads(r, real) for r in ("extract", "scan", "probe", "report")] == [4, 4, 2, 1]
    assert [resources.threads(r, demo) for r in ("extract", "scan", "probe")] == [1, 1, 1]
    cpu_probes = with_stages(real, probe={"device": "cpu"})
    assert resources.threads("probe", cpu_probes) == devices.probe_cpu_threads() >= 1
    assert resources.threads("probe", with_stages(real, probe={"device": "cpu", "threads": 6})) == 6


def test_fingerprints_hold_the_resolved_device_and_cpu_threads(real, demo):
    store = lp_fp.store(demo, "tiny_vit", "none").inputs
    assert store["extract.device"] == "cpu" and store["extract.threads"] == 1 and "probe.device" not in store
    gpu_store = lp_fp.store(real, "clip_b16", "none").inputs
    assert gpu_store["extract.device"] == "cuda" and "extract.threads" not in gpu_store
    probe = lp_fp.probe(demo, "tiny_vit", "none", "layer_01").inputs
    assert (probe["probe.device"], probe["probe.threads"]) == ("cpu", 1)
    scan = lp_fp.scan(real, "clip_b16", "none").inputs
    assert scan["scan.device"] == "cuda" and "extract.device" not in scan
    # on cuda, threads feed the device only: changing them changes no fingerprint
    more = with_stages(real, extract={"threads": 16}, probe={"threads": 8})
    probe = ("clip_b16", "none", "layer_01")
    assert lp_fp.probe(more, *probe).hash == lp_fp.probe(real, *probe).hash


def test_spelling_out_the_resolved_device_reruns_nothing(real):
    spelled = with_stages(real, extract={"device": "cuda"}, scan={"device": "cuda"}, probe={"device": "cuda"})
    assert lp_fp.report(spelled).hash == lp_fp.report(real).hash


def test_probe_settings_carry_the_resolved_placement(real):
    settings = ProbeSettings.from_config(with_stages(real, probe={"device": "cpu", "threads": 3}), "layer_01")
    assert (settings.device, settings.threads) == ("cpu", 3)
    assert settings.fingerprint_inputs()["probe.threads"] == 3
    assert ProbeSettings.from_config(real, "layer_01").device == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a node without CUDA")
def test_a_cuda_stage_on_a_node_without_cuda_stops_naming_the_key(real):
    with pytest.raises(devices.DeviceUnavailable, match=r"config key probe.device = 'auto' .*resolves to cuda.*"
                                                         r"probe.device: cpu"):
        devices.use(real, "probe")
    with pytest.raises(devices.DeviceUnavailable, match="extract.device = 'cuda'"):
        devices.use(with_stages(real, extract={"device": "cuda"}), "extract")


def test_a_cpu_stage_pins_torch_to_its_threads(demo):
    before = torch.get_num_threads()
    try:
        assert devices.use(with_stages(demo, probe={"threads": 2}), "probe") == "cpu"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_test_configs_with_real_models_run_on_the_cpu_explicitly():
    """Configs the suite runs whose models are not tiny must say cpu: `auto` would ask for a GPU."""
    raw = yaml.safe_load((ROOT / "tests/configs/edit_matrix.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    for config in (raw, smoke):
        assert all(config[stage]["device"] == "cpu" for stage in devices.STAGES), config
