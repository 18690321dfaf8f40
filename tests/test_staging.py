"""Staging: ADE20K fetched from a (file://) URL, verified, unpacked atomically; weights fetched into a
cache and loaded offline from it, with a clear error for a missing or partial cache.

Local stand-ins go through the same code as the real sources: a zip built here for the official
archive, a tiny LLaVA and a tiny open_clip ViT saved in the Hugging Face hub-cache layout for
`llava-hf/llava-1.5-7b-hf` and open_clip's `openai` weights (whose open_clip tags resolve to hub repos).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from layerprobe.data import download
from layerprobe.data.ade20k import check_layout
from layerprobe.data.synthetic import write_dataset
from layerprobe.models import weights
from tests.conftest import ROOT, copy_repo, snakemake

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, str]:
    """A zip laid out as the official one (a top-level ADEChallengeData2016/) and its sha1."""
    tmp = tmp_path_factory.mktemp("archive")
    root = write_dataset(tmp / "src" / "ADEChallengeData2016", training=6, validation=3, height=40, width=48)
    path = tmp / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(root.rglob("*")):
            zf.write(f, f.relative_to(root.parent))
    return path, "sha1:" + hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corrupted(archive, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "ADEChallengeData2016.zip"
    data = bytearray(archive[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_fetch_verifies_and_unpacks_into_root(archive, tmp_path):
    path, checksum = archive
    root = tmp_path / "data" / "ADEChallengeData2016"
    info = download.fetch_ade20k(path.as_uri(), checksum, root)
    assert check_layout(root) == {"training": 6, "validation": 3} == info["images"]
    assert [p.name for p in root.parent.iterdir()] == ["ADEChallengeData2016"]  # no temporary leftovers
    with pytest.raises(FileExistsError, match="dataset.root"):
        download.fetch_ade20k(path.as_uri(), checksum, root)


def test_checksum_mismatch_leaves_nothing_a_later_run_would_trust(corrupted, archive, tmp_path):
    root = tmp_path / "data" / "ADEChallengeData2016"
    with pytest.raises(download.ChecksumError, match="dataset.checksum"):
        download.fetch_ade20k(corrupted.as_uri(), archive[1], root)
    assert not root.exists() and list(root.parent.iterdir()) == []
    assert download.ADE20K_CHECKSUM.startswith("sha1:219e1696")
    with pytest.raises(ValueError, match="expected md5"):
        download.parse_checksum("crc32:1234")


def _download_config(workdir: Path, url: str, checksum: str) -> str:
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    config = {"dataset": {"root": "results/ade/ADEChallengeData2016", "download": True, "url": url,
                          "checksum": checksum},
              "models": {"tiny_vit": {**demo["models"]["tiny_vit"], "tiny": {**demo["models"]["tiny_vit"]["tiny"],
                                                                             "image_size": 32}}},
              "scan": {"enabled": False}}
    (workdir / "download.yaml").write_text(yaml.safe_dump(config))
    return "download.yaml"


def test_workflow_downloads_when_root_is_absent_and_fails_cleanly_on_a_bad_archive(archive, corrupted, tmp_path):
    path, checksum = archive
    good = copy_repo(tmp_path / "good")
    config = _download_config(good, path.as_uri(), checksum)
    snakemake(good, "results/data/32px.json", "--cores", "1", "--configfile", config)
    assert check_layout(good / "results/ade/ADEChallengeData2016")["training"] == 6
    assert json.loads((good / "results/dataset/ade20k.json").read_text())["downloaded"] is True
    # Present now: the next DAG finds nothing to do (the dataset's identity is the checksum).
    assert "Nothing to be done" in snakemake(good, "results/data/32px.json", "-n", "--configfile", config).stdout
    # Files edited in the unpacked root: its identity becomes its content, and preprocessing reruns.
    label = next((good / "results/ade/ADEChallengeData2016/annotations/validation").iterdir())
    training = label.parent.parent / "training"
    label.write_bytes((training / sorted(p.name for p in training.iterdir())[0]).read_bytes())
    plan = snakemake(good, "results/data/32px.json", "-n", "--configfile", config).stdout
    assert "rule preprocess:" in plan and "rule fetch_ade20k:" not in plan
    bad = copy_repo(tmp_path / "bad")
    config = _download_config(bad, corrupted.as_uri(), checksum)
    proc = snakemake(bad, "results/data/32px.json", "--cores", "1", "--configfile", config, check=False)
    assert proc.returncode != 0 and "dataset.checksum" in (bad / "results/logs/fetch_ade20k.log").read_text()
    assert not (bad / "results/ade/ADEChallengeData2016").exists()
    assert not (bad / "results/dataset/ade20k.json").exists()


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def _hub_snapshot(cache: Path, repo: str) -> Path:
    """The hub-cache layout hf_hub_download / snapshot_download resolve offline."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture()
def offline(monkeypatch):
    """Offline mode for one test, undone after it (go_offline sets process-wide state)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_llava_weights_fetched_into_the_cache_load_offline(tmp_path, offline, monkeypatch):
    from layerprobe.models.backbones import load_backbone
    from layerprobe.models.tiny.llava import build_tiny_llava

    cache = tmp_path / "cache"
    build_tiny_llava(_hub_snapshot(cache, "llava-hf/llava-1.5-7b-hf"), image_size=32, patch_size=8,
                     vision_width=32, vision_layers=2, text_width=32, text_layers=2, heads=2, seed=0)
    model = {"kind": "llava", "hub_id": "llava-hf/llava-1.5-7b-hf", "dtype": "float32",
             "attn_implementation": "sdpa", "prompt_format": "USER: {prompt}\n<image> ASSISTANT:"}
    assert weights.needs_fetch(model) and weights.source_id(model) == "llava-hf--llava-1.5-7b-hf"
    manifest = weights.fetch("llava", model, cache)  # snapshot_download: served from the cache here
    assert any(f.endswith(".safetensors") for f in manifest["files"]) and "refs" not in json.dumps(manifest)
    monkeypatch.chdir(tmp_path)
    written = tmp_path / "weights.json"  # the fetch_weights rule's output
    written.write_text(json.dumps(manifest))
    config = {"weights": {"cache_dir": str(cache), "offline": True}}
    options = weights.loader_options("llava", model, config, written)
    backbone = load_backbone("llava", model, "cpu", **options)
    import torch

    tokens, _ = backbone.extract(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["Describe the image"], ["layer_02"])
    assert tokens["layer_02"].shape == (1, 16, 32)
    # A partial cache (a weights file gone) and an interrupted download are errors naming the fix.
    weights_file = next(cache.rglob("*.safetensors"))
    weights_file.rename(weights_file.with_suffix(".moved"))
    with pytest.raises(weights.WeightsNotCached, match=r"models.llava: .*partial.*missing.*snakemake --cores 1"):
        weights.loader_options("llava", model, config, written)
    weights_file.with_suffix(".moved").rename(weights_file)
    (cache / "models--llava-hf--llava-1.5-7b-hf" / "blob.incomplete").write_text("")
    with pytest.raises(weights.WeightsNotCached, match="interrupted download"):
        weights.loader_options("llava", model, config, written)


def test_missing_cache_on_an_offline_job_names_the_model_and_the_fetch_command(tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = {"kind": "open_clip", "arch": "ViT-B-16-quickgelu", "pretrained": "openai"}
    manifest = "results/weights/open_clip--ViT-B-16-quickgelu--openai.json"  # the rule's output, not fetched
    with pytest.raises(weights.WeightsNotCached,
                       match=r"models.clip_b16: no weights manifest .*open_clip--ViT-B-16-quickgelu--openai.json.*"
                             r"snakemake --cores 1 --configfile <your config> results/weights/"):
        weights.loader_options("clip_b16", model, {"weights": {"cache_dir": "c", "offline": True}}, manifest)


def test_open_clip_tag_fetched_into_the_cache_loads_offline(tmp_path, offline, monkeypatch):
    """open_clip resolves `openai` to a hub repo; a registered stand-in tag does the same."""
    import open_clip
    import torch
    from open_clip import pretrained as registry

    from layerprobe.models.backbones.openclip import OpenClipBackbone
    from layerprobe.models.tiny.openclip import build

    tiny = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mixing": 0.0, "seed": 0}
    built = build("lp-staging-vit", tmp_path / "built" / "w.pt", tiny)
    cache = tmp_path / "cache"
    state = torch.load(built, weights_only=True)
    torch.save(state, _hub_snapshot(cache, "lp-test/tiny-clip") / "open_clip_pytorch_model.bin")
    monkeypatch.setitem(registry._PRETRAINED, "lp-staging-vit",
                        {"lptag": {"hf_hub": "lp-test/tiny-clip/", "quick_gelu": True}})
    model = {"kind": "open_clip", "arch": "lp-staging-vit", "pretrained": "lptag"}
    manifest = weights.fetch("vit", model, cache)
    assert list(manifest["files"]) == [f"models--lp-test--tiny-clip/snapshots/{REVISION}/open_clip_pytorch_model.bin"]
    monkeypatch.chdir(tmp_path)
    written = tmp_path / "weights.json"
    written.write_text(json.dumps(manifest))
    options = weights.loader_options("vit", model, {"weights": {"cache_dir": str(cache), "offline": True}}, written)
    backbone = OpenClipBackbone("vit", model["arch"], model["pretrained"], "cpu", cache_dir=options["cache_dir"])
    reference = open_clip.create_model("lp-staging-vit", pretrained=str(built))
    assert torch.equal(backbone.visual.conv1.weight, reference.visual.conv1.weight)


def test_real_config_fetches_each_source_once_and_extraction_waits_for_it(tmp_path):
    workdir = copy_repo(tmp_path / "w")
    out = snakemake(workdir, "-n", "--configfile", "config/config.yaml").stdout
    fetched = sorted(set(line.split()[-1] for line in out.splitlines() if "output: results/weights/" in line))
    assert fetched == ["results/weights/llava-hf--llava-1.5-7b-hf.json",
                       "results/weights/open_clip--ViT-B-16-quickgelu--openai.json",
                       "results/weights/open_clip--ViT-L-14-336-quickgelu--openai.json",
                       "results/weights/open_clip--ViT-L-14-quickgelu--openai.json"]
    extract = out[out.index("rule extract:"):]
    assert "results/weights/" in extract[:extract.index("\n\n")]


# --------------------------------------------------------------------------------------------
# The weights' identity (part of every store and scan fingerprint)
# --------------------------------------------------------------------------------------------

OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def test_a_hub_id_is_identified_by_the_commit_its_ref_points_at(tmp_path, offline):
    cache = tmp_path / "cache"
    for commit in (REVISION, OTHER):
        folder = cache / "models--org--tiny" / "snapshots" / commit
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text(REVISION)
    model = {"kind": "llava", "hub_id": "org/tiny"}
    weights.forget_commits()
    assert weights.identity("m", model, str(cache)) == {"models.m.weights": f"org/tiny@{REVISION}"}
    (cache / "models--org--tiny" / "refs" / "main").write_text(OTHER)  # the snapshot moved
    weights.forget_commits()
    assert weights.identity("m", model, str(cache)) == {"models.m.weights": f"org/tiny@{OTHER}"}
    pinned = {**model, "revision": REVISION}  # a pinned commit wins over the ref
    assert weights.identity("m", pinned, str(cache)) == {"models.m.weights": f"org/tiny@{REVISION}"}
    # not cached and offline (a dry run without network): unresolved, never a guess
    assert weights.identity("m", {**model, "hub_id": "org/absent"}, str(cache))["models.m.weights"].endswith(
        "@unresolved")
    # the fetch records the commit; planned with another one, it refuses
    manifest = weights.fetch("m", model, cache, planned={"models.m.weights": f"org/tiny@{OTHER}"})
    assert manifest["commit"] == OTHER
    with pytest.raises(weights.WeightsChanged, match=f"{REVISION}.*{OTHER}"):
        weights.fetch("m", model, cache, planned={"models.m.weights": f"org/tiny@{REVISION}"})


def test_local_weights_are_identified_by_their_content(tmp_path, monkeypatch):
    """A weights file or saved directory replaced at the same path gets a new identity; the same
    bytes written again (new mtime, new inode) keep it."""
    monkeypatch.chdir(tmp_path)  # the digest cache lives in ./.snakemake/
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    hub = {"kind": "llava", "hub_id": str(folder)}
    first = weights.identity("m", hub, None)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    assert weights.identity("m", hub, None) == first
    (folder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)
    assert weights.identity("m", hub, None) != first
    pt = tmp_path / "vit.pt"
    pt.write_bytes(b"weights")
    clip = {"kind": "open_clip", "arch": "ViT-B-16", "pretrained": str(pt)}
    before = weights.identity("v", clip, None)
    pt.write_bytes(b"other weights")
    assert weights.identity("v", clip, None) != before and before["models.v.weights"].startswith("file sha256:")
    assert weights.identity("t", {**clip, "tiny": {"seed": 0}}, None) == {}  # a tiny model: its tiny block


def test_a_tiny_model_changed_by_hand_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pt = tmp_path / "tiny.pt"
    pt.write_bytes(b"built")
    model = {"kind": "open_clip", "arch": "lp-tiny", "pretrained": str(pt), "tiny": {"seed": 0}}
    built = tmp_path / "tiny.built"
    weights.check_tiny_intact("t", model, built)  # not built yet: nothing to compare
    built.write_text(json.dumps({"digest": weights.tiny_digest(model)}))
    weights.check_tiny_intact("t", model, built)
    pt.write_bytes(b"replaced")
    with pytest.raises(weights.WeightsChanged, match=rf"models.t: {pt} changed since build_tiny_model"):
        weights.check_tiny_intact("t", model, built)
