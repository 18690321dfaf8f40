"""DAG-build behaviour: the real config dry-runs without data or weights; bad input fails early."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_repo, snakemake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("dag"))


def test_real_config_dry_run_lists_full_dag(workdir):
    out = snakemake(workdir, "-n", "--configfile", "config/config.yaml").stdout
    real = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for name in ("clip_b16", "clip_l14", "clip_l14_336"):
        for layer in real["models"][name]["layers"]:
            assert f"results/probes/{name}/none/layer_{layer:02d}/metrics.json" in out
            assert f"results/probes/{name}/none/layer_{layer:02d}+cls/metrics.json" in out  # concat_cls: both
    for prompt in ("describe", "describe_category", "imagine_category", "describe_category+shuffled",
                   "imagine_category+shuffled"):  # the {category} oracles and their controls
        assert f"results/features/llava15_7b_prompted/{prompt}.manifest.json" in out
        assert f"results/probes/llava15_7b_prompted/{prompt}/layer_32/metrics.json" in out
        assert f"results/scan/llava15_7b_prompted/{prompt}.csv" in out
    assert "describe+shuffled" not in out  # a prompt without {category} has one store
    for layer in (1, 2, 4, 8, 12, 16, 20, 24, 28, 31, 32):
        assert f"results/probes/llava15_7b/describe/layer_{layer:02d}/metrics.json" in out
    assert "results/report.html" in out
    assert "wildcards: model=llava15_7b, prompt=describe, part=3" in out  # parts: 4


def test_demo_dag_has_a_store_per_category_fill(workdir):
    """demo.yaml lists [dominant, shuffled] for describe_category: the control is a store of its
    own, with its extraction parts, probes and scan, beside the oracle's plain-id store."""
    out = snakemake(workdir, "-n", "--profile", "profiles/local").stdout
    control = "tiny_llava/describe_category+shuffled"
    for path in (f"results/demo/features/{control}.manifest.json", f"results/demo/features/{control}.part1.json",
                 f"results/demo/probes/{control}/layer_02/metrics.json", f"results/demo/scan/{control}.csv",
                 "results/demo/features/tiny_llava/describe_category.manifest.json"):
        assert path in out, path
    assert "wildcards: model=tiny_llava, prompt=describe_category+shuffled, part=1" in out


def _write_config(workdir: Path, mutate) -> str:
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    mutate(cfg)
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["probe"].update(epochz=3), "unknown config key probe.epochz"),
    (lambda c: c["models"]["tiny_vit"].update(layers=[-1]), "models.tiny_vit.layers[0]"),
    (lambda c: c["models"]["tiny_vit"].update(layers=[9]), "beyond the model's depth"),
    (lambda c: c["models"]["tiny_llava"]["prompts"][0].update(text="{colour} things"), "unknown placeholder"),
    (lambda c: c["models"]["tiny_llava"]["prompts"][1].update(id="describe"), "used more than once"),
    (lambda c: c["dataset"].update(class_names=None), "dataset.class_names"),
    (lambda c: c["models"]["tiny_llava"].update(layers=[3]), "models.tiny_llava.layers"),
    (lambda c: c["scan"].update(models=["tiny_vitt"]), "scan.models"),
    (lambda c: c["models"]["tiny_llava"]["prompts"][0].update(category_fill=["shuffled"]),
     "models.tiny_llava.prompts[0].category_fill"),
    (lambda c: c["models"]["tiny_llava"]["prompts"][1].update(category_fill=["dominant", "shuffle"]),
     "models.tiny_llava.prompts[1].category_fill[1]"),
    # any model is a config entry, so a name its library doesn't know fails here, naming the source
    (lambda c: c["models"].update(extra={"kind": "open_clip", "arch": "ViT-Q-99", "pretrained": "openai",
                                         "layers": [1]}),
     "models.extra.arch: unknown open_clip architecture 'ViT-Q-99'; the known names are open_clip's model configs"),
    (lambda c: c["models"].update(extra={"kind": "hf_vision", "hub_id": "nobody/dino", "layers": [1]}),
     "models.extra.hub_id: config.json of 'nobody/dino' is not available offline"),
])
def test_bad_config_fails_at_dag_build_naming_the_key(workdir, mutate, expected):
    proc = snakemake(workdir, "-n", "--configfile", _write_config(workdir, mutate), check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr


def test_missing_dataset_fails_before_any_job(workdir, tmp_path):
    def mutate(c):
        c["dataset"] = {"root": str(tmp_path / "nowhere" / "ADEChallengeData2016")}
    proc = snakemake(workdir, "--cores", "1", "--configfile", _write_config(workdir, mutate), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "dataset.root" in text and "nowhere" in text
    assert "rule preprocess" not in text  # nothing was scheduled


def test_empty_split_fails_at_dag_build(workdir, tmp_path):
    from layerprobe.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "ADEChallengeData2016", training=2, validation=1)
    for f in (root / "images" / "validation").iterdir():
        f.unlink()

    def mutate(c):
        c["dataset"] = {"root": str(root)}
    proc = snakemake(workdir, "--cores", "1", "--configfile", _write_config(workdir, mutate), check=False)
    assert proc.returncode != 0 and "images/validation: empty split" in proc.stdout + proc.stderr


def test_duplicate_image_stems_fail_at_dag_build_naming_both_files(workdir, tmp_path):
    from PIL import Image

    from layerprobe.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "ADEChallengeData2016", training=2, validation=1)
    jpg = root / "images/validation/ADE_val_00000001.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))

    def mutate(c):
        c["dataset"] = {"root": str(root)}
    proc = snakemake(workdir, "--cores", "1", "--configfile", _write_config(workdir, mutate), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "ADE_val_00000001.jpg and" in text and "ADE_val_00000001.png" in text
    assert "rule preprocess" not in text
