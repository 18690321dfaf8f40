"""Model specs computed through transformers are remembered across processes (models.specs.memo),
and recomputed whenever a file they read changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from layerprobe.models.specs.hub import pinned_dir

LLAVA_7B = pinned_dir("llava-hf/llava-1.5-7b-hf") / "config.json"
SPEC_IN_A_NEW_PROCESS = """
import json, sys
from layerprobe.models.specs import model_spec
spec = model_spec("m", {"kind": "llava", "hub_id": "llava"})
print(json.dumps({"depth": spec.depth, "dim": spec.dim, "transformers": "transformers" in sys.modules}))
"""


def spec_in_new_process(workdir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SPEC_IN_A_NEW_PROCESS], cwd=workdir, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_a_spec_is_computed_once_and_recomputed_when_its_config_changes(tmp_path: Path) -> None:
    (tmp_path / "llava").mkdir()
    shutil.copy(LLAVA_7B, tmp_path / "llava/config.json")
    first = spec_in_new_process(tmp_path)
    assert first == {"depth": 32, "dim": 4096, "transformers": True}  # Llama's default depth, from transformers
    assert list((tmp_path / ".snakemake/layerprobe/specs").glob("*.json"))
    assert spec_in_new_process(tmp_path) == {**first, "transformers": False}  # remembered: no transformers import

    config = json.loads(LLAVA_7B.read_text())
    config["text_config"]["num_hidden_layers"] = 4
    (tmp_path / "llava/config.json").write_text(json.dumps(config))
    assert spec_in_new_process(tmp_path) == {"depth": 4, "dim": 4096, "transformers": True}
    assert spec_in_new_process(tmp_path) == {"depth": 4, "dim": 4096, "transformers": False}

    shutil.rmtree(tmp_path / "llava")  # gone: the spec's error, never the remembered spec
    proc = subprocess.run([sys.executable, "-c", SPEC_IN_A_NEW_PROCESS], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "config.json" in proc.stderr
