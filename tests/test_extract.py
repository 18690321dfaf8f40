"""CLIP extraction: values equal the backbone's own block outputs; stores resume byte-identically."""

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from layerprobe import fingerprint as lp_fp
from layerprobe.features import markers, store
from layerprobe.features.extract import build_store, extract_part
from layerprobe.models.backbones import load_backbone
from tests.helpers import KEYS, tiny_backbone, tiny_config, tiny_data, tiny_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    model, backbone = tiny_backbone(tmp)
    return tmp, model, backbone


def test_layer_k_equals_block_k_output(tiny):
    _, _, backbone = tiny
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    keys = [f"layer_{i:02d}" for i in range(5)]
    tokens, cls = backbone.extract(images, None, keys)
    x = backbone.normalize(images)
    # open_clip's own path: block outputs (0-based block index i -> our layer i+1), before ln_post.
    ref = backbone.visual.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True,
                                                output_fmt="NLC", output_extra_tokens=True)
    for i in range(4):
        assert torch.allclose(tokens[f"layer_{i + 1:02d}"], ref["image_intermediates"][i].flatten(2).transpose(1, 2)
                              if ref["image_intermediates"][i].dim() == 4 else ref["image_intermediates"][i],
                              atol=1e-5)
        assert torch.allclose(cls[f"layer_{i + 1:02d}"], ref["image_intermediates_prefix"][i][:, 0], atol=1e-5)
    # layer 0 = the input of block 1, computed by hand from the embedding modules.
    with torch.no_grad():
        emb = backbone.visual._embeds(x)
    assert torch.allclose(tokens["layer_00"], emb[:, 1:], atol=1e-6)


def test_early_stop_changes_nothing_and_skips_later_blocks(tiny):
    _, _, backbone = tiny
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    full, _ = backbone.extract(images, None, ["layer_01", "layer_04"])
    calls = []
    hook = backbone.blocks[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        early, _ = backbone.extract(images, None, ["layer_01"])
    finally:
        hook.remove()
    assert torch.equal(full["layer_01"], early["layer_01"])
    assert calls == []  # block 4 never ran


def _store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and ".progress" not in p.parts}


def _chunk_files(path: Path, key: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every chunk file of one layer: proof a later step did not touch them."""
    files = [p for split in ("training", "validation") for p in (path / split / key / "c").rglob("*") if p.is_file()]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


class _Crash(Exception):
    pass


@contextlib.contextmanager
def crash_on_forward(backbone, call: int):
    """The backbone's `call`-th forward raises _Crash (a job dying mid-extraction)."""
    original, calls = backbone.extract, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise _Crash
        return original(*args, **kwargs)

    backbone.extract = crashing
    try:
        yield
    finally:
        backbone.extract = original


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stores")
    cfg = tiny_config(tmp)
    backbone = load_backbone("tiny", cfg["models"]["tiny"], "cpu")
    data = tiny_data(tmp)
    layout = tiny_layout(cfg, data)
    whole = tmp / "whole.zarr"
    build_store(backbone, data, whole, tmp / "whole.json", layout, KEYS, 4)
    return cfg, backbone, data, layout, whole


def test_interrupted_extraction_resumes_to_identical_store(setup, tmp_path):
    cfg, backbone, data, layout, whole = setup
    broken = tmp_path / "broken.zarr"
    store.prepare(broken, layout, KEYS)
    with crash_on_forward(backbone, 4), pytest.raises(_Crash):
        extract_part(backbone, data, broken, layout, KEYS, 0, 1, 4)
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(broken, tmp_path / "broken.json", KEYS)
    assert not (tmp_path / "broken.json").exists()
    unmarked = len(markers.missing_work(broken, layout.all_chunks(), KEYS))
    assert 0 < unmarked < 7
    stats = extract_part(backbone, data, broken, layout, KEYS, 0, 1, 4)
    assert stats["chunks"] == unmarked  # only unfinished chunks were redone
    store.finalize(broken, tmp_path / "broken.json", KEYS)
    assert _store_bytes(broken) == _store_bytes(whole)


def test_parts_write_disjoint_ranges_and_match_one_part(setup, tmp_path):
    cfg, backbone, data, layout, whole = setup
    two = tmp_path / "two.zarr"
    store.prepare(two, layout, KEYS)
    first = extract_part(backbone, data, two, layout, KEYS, 0, 2, 4)
    with pytest.raises(RuntimeError, match="incomplete"):
        store.finalize(two, tmp_path / "two.json", KEYS)
    second = extract_part(backbone, data, two, layout, KEYS, 1, 2, 4)
    assert first["chunks"] + second["chunks"] == 7  # 20 train + 8 val images, 4 per chunk
    store.finalize(two, tmp_path / "two.json", KEYS)
    assert _store_bytes(two) == _store_bytes(whole)


def test_store_layout_and_attrs(setup, tmp_path):
    cfg, backbone, data, layout, path = setup
    group = store.open_store(path)
    arr = group["training/layer_02"]
    assert arr.dtype == np.float16 and arr.shape == (20, 16, 32) and arr.chunks == (4, 16, 32)
    assert arr.attrs["layer"] == "layer_02" and arr.attrs["model"] == "tiny" and arr.attrs["grid"] == 4
    assert arr.attrs["fingerprint"] == lp_fp.layer(cfg, "tiny", "none", "layer_02").hash
    attrs = group.attrs
    assert attrs["model"] == "tiny" and attrs["grid"] == 4 and attrs["layers"] == KEYS
    assert attrs["complete_layers"] == KEYS and attrs["fingerprint"] == lp_fp.store(cfg, "tiny", "none").record()
    order = attrs["training_order"]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    ids = data.attrs["training_image_ids"]
    assert attrs["training_image_ids"] == [ids[i] for i in order]
    # labels are stored in store order next to the features
    assert np.array_equal(group["training/labels"][:], data["training/labels"][:][order])
    manifest = json.loads((path.parent / "whole.json").read_text())
    assert manifest["bytes"] > 0 and manifest["layers"] == KEYS
    assert manifest["layer_fingerprints"]["layer_04"] == lp_fp.layer(cfg, "tiny", "none", "layer_04").hash


def test_extension_writes_only_the_new_layers_and_stops_at_the_deepest_new_one(setup, tmp_path):
    """Adding layers runs one shallow forward per chunk and touches no existing chunk file; the
    result equals a store built with every layer from the start."""
    cfg, backbone, data, layout, whole = setup
    path = tmp_path / "grow.zarr"
    build_store(backbone, data, path, tmp_path / "grow.json", layout, ["layer_00", "layer_03", "layer_04"], 4)
    before = {k: _chunk_files(path, k) for k in ("layer_00", "layer_03", "layer_04", "labels")}
    ran = []
    hooks = [b.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, b in enumerate(backbone.blocks, 1)]
    try:
        info = store.prepare(path, layout, KEYS)
        stats = extract_part(backbone, data, path, layout, KEYS, 0, 1, 4)
    finally:
        for hook in hooks:
            hook.remove()
    assert info["added"] == ["layer_01", "layer_02"] and info["discarded"] is None and not info["created"]
    assert stats["chunks"] == 7 and stats["pairs"] == 14 and stats["layers"] == ["layer_01", "layer_02"]
    assert set(ran) == {1, 2}  # blocks 3 and 4 never ran: the forward stopped after layer_02
    assert {k: _chunk_files(path, k) for k in before} == before
    store.finalize(path, tmp_path / "grow.json", KEYS)
    assert _store_bytes(path) == _store_bytes(whole)


def test_removing_a_layer_deletes_nothing_and_keys_after_run_keeps_it(setup, tmp_path):
    cfg, backbone, data, layout, whole = setup
    path = tmp_path / "keep.zarr"
    shutil.copytree(whole, path)
    files = _store_bytes(path)
    assert store.keys_after_run(path, layout.fingerprint, ["layer_01"]) == KEYS
    info = store.prepare(path, layout, ["layer_01"])
    assert info["added"] == [] and info["layers"] == KEYS
    assert extract_part(backbone, data, path, layout, ["layer_01"], 0, 1, 4)["chunks"] == 0
    assert _store_bytes(path) == files
    # Under another fingerprint nothing in the store counts.
    assert store.keys_after_run(path, layout.fingerprint | {"x": 1}, ["layer_01"]) == ["layer_01"]
    assert store.keys_after_run(tmp_path / "absent.zarr", layout.fingerprint, ["layer_02"]) == ["layer_02"]


def test_a_changed_fingerprint_discards_the_store_and_parts_never_create(setup, tmp_path):
    cfg, backbone, data, layout, whole = setup
    path = tmp_path / "stale.zarr"
    shutil.copytree(whole, path)
    other = tiny_layout(tiny_config(tmp_path, **{"batch_size": 2}), data)  # batch size shapes the bytes
    with pytest.raises(store.StoreNotPrepared, match="batch_size: 4 -> 2"):
        extract_part(backbone, data, path, other, KEYS, 0, 1, 2)
    info = store.prepare(path, other, ["layer_01"])
    assert info["created"] and "models.tiny.batch_size: 4 -> 2" in info["discarded"]
    assert not (path / ".progress").exists() and store.read_attrs(path)["layers"] == ["layer_01"]
    with pytest.raises(store.StoreNotPrepared, match="no arrays for"):
        extract_part(backbone, data, path, other, KEYS, 0, 1, 2)
    with pytest.raises(store.StoreNotPrepared, match="no store here"):
        extract_part(backbone, data, tmp_path / "never.zarr", other, KEYS, 0, 1, 2)
    assert not (tmp_path / "never.zarr").exists()


def test_prepare_clears_what_a_killed_prepare_left(setup, tmp_path):
    """A kill during creation leaves a temporary copy; during a discard, a renamed copy; during
    an extension, arrays not yet listed. Prepare removes or rebuilds all three."""
    cfg, backbone, data, layout, whole = setup
    path = tmp_path / "s.zarr"
    store.prepare(path, layout, ["layer_00"])
    (tmp_path / "s.zarr.tmp-deadbeef").mkdir()
    shutil.copytree(whole, tmp_path / "s.zarr.discard-0badf00d")
    group = zarr.open_group(path, mode="r+")
    group.create_array("training/layer_02", shape=(3, 1), dtype="float16")  # wrong shape, unlisted
    info = store.prepare(path, layout, ["layer_00", "layer_02"])
    assert info["added"] == ["layer_02"] and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert store.open_store(path)["training/layer_02"].shape == (20, 16, 32)


def test_resume_with_two_parts_redoes_exactly_the_unmarked_chunks(setup, tmp_path, caplog):
    """Part 1 of 2 crashes after two of its chunks; on rerun part 0 has nothing to do, part 1
    exactly the chunks it left unmarked, and its log says how many."""
    cfg, backbone, data, layout, whole = setup
    path = tmp_path / "parts.zarr"
    store.prepare(path, layout, KEYS)
    extract_part(backbone, data, path, layout, KEYS, 0, 2, 4)
    with crash_on_forward(backbone, 3), pytest.raises(_Crash):
        extract_part(backbone, data, path, layout, KEYS, 1, 2, 4)
    unmarked = markers.missing_work(path, store.part_chunks(layout, 1, 2), KEYS)
    assert len(unmarked) == len(store.part_chunks(layout, 1, 2)) - 2
    with caplog.at_level("INFO", logger="layerprobe.extract"):
        again = [extract_part(backbone, data, path, layout, KEYS, p, 2, 4)["chunks"] for p in (0, 1)]
    assert again == [0, len(unmarked)]
    assert f"part 2/2: {len(unmarked)} of {len(store.part_chunks(layout, 1, 2))} chunks to do" in caplog.text
    store.finalize(path, tmp_path / "parts.json", KEYS)
    assert _store_bytes(path) == _store_bytes(whole)


def test_a_probe_refuses_features_of_another_config(setup):
    cfg, backbone, data, layout, whole = setup
    group = store.open_store(whole)
    store.check_layer(group, "layer_02", lp_fp.layer(cfg, "tiny", "none", "layer_02"), str(whole))
    other = tiny_config(whole.parent / "other", batch_size=2)
    with pytest.raises(lp_fp.StaleResultError,
                       match=r"layer_02: features made with another config.*batch_size: 4 -> 2"):
        store.check_layer(group, "layer_02", lp_fp.layer(other, "tiny", "none", "layer_02"), str(whole))


def test_raw_chunk_writes_are_the_bytes_zarr_writes(tmp_path):
    """The writer's raw chunk files (full chunks and the padded edge chunk) equal zarr's own.
    No `store.make_chunk_dirs` here: the writer makes a missing chunk directory itself."""
    from layerprobe.features.extract import RawChunks

    group = zarr.open_group(tmp_path / "w.zarr", mode="w")
    values = np.random.default_rng(0).standard_normal((10, 3, 5)).astype(np.float16)
    arrays = {name: group.create_array(name, shape=(10, 3, 5), chunks=(4, 3, 5), dtype="float16",
                                       compressors=None, fill_value=0) for name in ("zarr", "raw")}
    arrays["zarr"][:] = values
    raw = RawChunks.of(arrays["raw"])
    for chunk in range(3):
        raw.write(chunk, values[chunk * 4:(chunk + 1) * 4])
    for chunk in range(3):
        raw, written = (tmp_path / f"w.zarr/{name}/c/{chunk}/0/0" for name in ("raw", "zarr"))
        assert raw.read_bytes() == written.read_bytes()
    np.testing.assert_array_equal(arrays["raw"][:], values)
    # A chunk given as its forward batches (parts of 3 + 1 rows; the edge chunk as 1 + 1) is one
    # gathered write of the same bytes.
    parts = {0: [values[0:3], values[3:4]], 1: [values[4:5], values[5:8]], 2: [values[8:9], values[9:10]]}
    gathered = RawChunks.of(group.create_array("gathered", shape=(10, 3, 5), chunks=(4, 3, 5), dtype="float16",
                                               compressors=None, fill_value=0))
    for chunk, chunk_parts in parts.items():
        gathered.write(chunk, chunk_parts)
        assert (tmp_path / f"w.zarr/gathered/c/{chunk}/0/0").read_bytes() == \
            (tmp_path / f"w.zarr/zarr/c/{chunk}/0/0").read_bytes()
    compressed = group.create_array("z", shape=(4, 2), chunks=(4, 2), dtype="float16")
    assert RawChunks.of(compressed) is None  # zstd by default: written through zarr


# --------------------------------------------------------------------------------------------
# LLaVA stores per category fill: the oracle and its shuffled control
# --------------------------------------------------------------------------------------------

CATEGORY_PROMPT = "Describe the {category} in the image"
LLAVA_TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "text_width": 32,
              "text_layers": 2, "seed": 0}


@pytest.fixture(scope="module")
def fill_stores(tmp_path_factory):
    """A tiny LLaVA's dominant and shuffled stores of one {category} prompt, each in two parts."""
    from layerprobe import config as lp_config
    from layerprobe.models.tiny.llava import build_tiny_llava

    tmp = tmp_path_factory.mktemp("fills")
    tiny = {k: LLAVA_TINY[k] for k in ("image_size", "patch_size", "heads", "text_width", "text_layers", "seed")}
    hub = build_tiny_llava(tmp / "tiny_llava", vision_width=32, vision_layers=2, **tiny)
    model = {"kind": "llava", "hub_id": str(hub), "tiny": LLAVA_TINY, "layers": [1], "batch_size": 4,
             "prompt_format": "USER: {prompt}\n<image> ASSISTANT:",
             "prompts": [{"id": "describe_category", "text": CATEGORY_PROMPT,
                          "category_fill": ["dominant", "shuffled"]}]}
    cfg = lp_config.validate({"dataset": {"root": str(tmp / "ADEChallengeData2016"), "synthetic": {}},
                              "store": {"chunk_images": 4}, "models": {"tiny_llava": model}})
    backbone = load_backbone("tiny_llava", cfg["models"]["tiny_llava"], "cpu")
    data = tiny_data(tmp)
    paths = {}
    for store_id in lp_config.prompt_ids(cfg["models"]["tiny_llava"]):
        paths[store_id] = tmp / f"{store_id}.zarr"
        build_store(backbone, data, paths[store_id], tmp / f"{store_id}.json",
                    tiny_layout(cfg, data, "tiny_llava", store_id), ["layer_01"], 4, parts=2)
    return cfg, data, paths


def test_shuffled_store_is_conditioned_on_a_donors_class(fill_stores):
    from layerprobe.models.prompts import donor_rows, split_dominant_classes

    cfg, data, paths = fill_stores
    assert sorted(paths) == ["describe_category", "describe_category+shuffled"]
    oracle, control = (store.open_store(paths[p]) for p in sorted(paths))
    names = data.attrs["class_names"]
    name = lambda c: "object" if c < 0 else names[c]  # noqa: E731
    differing = 0
    for split in store.SPLITS:
        order = oracle.attrs[f"{split}_order"]
        assert control.attrs[f"{split}_order"] == order  # same images in the same store rows
        own = split_dominant_classes(data, split)
        donors = donor_rows(len(own), 0, split)
        filled = {p: g.attrs["filled_prompts"][split] for p, g in (("dominant", oracle), ("shuffled", control))}
        assert filled["dominant"] == [CATEGORY_PROMPT.format(category=name(own[r])) for r in order]
        assert filled["shuffled"] == [CATEGORY_PROMPT.format(category=name(own[donors[r]])) for r in order]
        changed = [name(own[r]) != name(own[donors[r]]) for r in order]
        assert [a != b for a, b in zip(filled["dominant"], filled["shuffled"])] == changed
        differing += sum(changed)
        # The prompt reached the model: image tokens differ where the class name does (by ~3e-3
        # in this tiny model; elsewhere padding in a batch of other prompts may move an fp16 ulp).
        a, b = (g[f"{split}/layer_01"][:].astype(np.float32) for g in (oracle, control))
        assert [not np.allclose(x, y, rtol=0, atol=1e-4) for x, y in zip(a, b)] == changed
    assert differing > 0
    assert "category_fill" not in oracle.attrs  # the oracle's attrs are as before fills had a choice
    assert control.attrs["category_fill"] == "shuffled" and control.attrs["category_seed"] == 0
    manifest = json.loads((paths["describe_category+shuffled"].parent / "describe_category+shuffled.json").read_text())
    assert manifest["category_fill"] == "shuffled" and manifest["prompt_id"] == "describe_category+shuffled"
    assert control.attrs["fingerprint"] == lp_fp.store(cfg, "tiny_llava", "describe_category+shuffled").record()
