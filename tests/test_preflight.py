"""What common.smk runs before anything is queued, tested without Snakemake."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from layerprobe import config as lp_config
from layerprobe import preflight
from layerprobe.data.synthetic import write_dataset
from layerprobe.models import weights


def _real(tmp_path, **dataset) -> dict:
    model = {"kind": "open_clip", "arch": "ViT-B-16-quickgelu", "pretrained": "openai", "layers": [1]}
    return lp_config.validate({"dataset": {"root": str(tmp_path / "ADEChallengeData2016"), **dataset},
                               "models": {"clip": model}})


@pytest.mark.parametrize("argv, dry", [(["snakemake", "-n"], True), (["snakemake", "--dry-run"], True),
                                       (["snakemake", "-np", "--cores", "2"], True),
                                       (["snakemake", "--cores", "2"], False), (["snakemake", "--notemp"], False)])
def test_dry_runs_are_told_from_the_command_line(argv, dry):
    assert preflight.is_dry_run(argv) is dry
    assert preflight.is_dry_run(["snakemake"], SimpleNamespace(dryrun=True))


def test_a_missing_dataset_fails_before_any_job_naming_the_key_but_not_on_a_dry_run(tmp_path):
    config = _real(tmp_path)
    with pytest.raises(preflight.PreflightError, match="config key dataset.root"):
        preflight.preflight(config, dry_run=False, tiny_built={})
    summary = preflight.preflight(config, dry_run=True, tiny_built={})  # a dry run needs no data
    assert summary.startswith("layerprobe plan:")
    to_download = _real(tmp_path, download=True)  # checked once fetch_ade20k has unpacked it
    assert preflight.preflight(to_download, dry_run=False, tiny_built={}) is None
    write_dataset(tmp_path / "ADEChallengeData2016", training=2, validation=1, height=20, width=24)
    assert preflight.preflight(config, dry_run=False, tiny_built={}) is None


def test_a_tiny_model_changed_by_hand_fails_before_any_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights_file = tmp_path / "tiny.pt"
    weights_file.write_bytes(b"built")
    model = {"kind": "open_clip", "arch": "layerprobe-tiny-vit", "pretrained": str(weights_file),
             "tiny": {"image_size": 32, "patch_size": 8}, "layers": [1]}
    config = lp_config.validate({"dataset": {"root": str(tmp_path / "d"), "synthetic": {}}, "models": {"t": model}})
    built = tmp_path / "t.built"
    built.write_text(json.dumps({"digest": weights.tiny_digest(config["models"]["t"])}))
    assert preflight.preflight(config, dry_run=False, tiny_built={"t": str(built)}) is None
    weights_file.write_bytes(b"replaced")
    with pytest.raises(preflight.PreflightError, match=r"models.t: .*tiny.pt changed since build_tiny_model"):
        preflight.preflight(config, dry_run=False, tiny_built={"t": str(built)})
