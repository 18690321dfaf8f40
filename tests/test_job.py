"""The scripts' job context, without Snakemake: how it reads the inputs Snakemake hands it."""

from __future__ import annotations

from types import SimpleNamespace

from layerprobe.job import Job


def job_with_model_input(model: object) -> Job:
    return Job(snakemake=SimpleNamespace(input=SimpleNamespace(model=model)), config={}, fingerprint=None)


def test_weights_manifest_from_a_single_named_input_or_a_list() -> None:
    # Snakemake gives a named input of one file as a plain string, of several as a list.
    assert job_with_model_input("w/hub.json").weights_manifest() == "w/hub.json"
    assert job_with_model_input(["m/tiny.pt", "m/tiny.pt.built"]).weights_manifest() is None
    assert job_with_model_input(["m/llava", "w/hub.json"]).weights_manifest() == "w/hub.json"
    assert Job(SimpleNamespace(input=SimpleNamespace()), {}, None).weights_manifest() is None
