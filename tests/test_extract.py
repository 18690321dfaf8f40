"""CLIP extraction: values equal the backbone's own block outputs; stores resume byte-identically."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from layerprobe import store
from layerprobe.extract import run_part
from tests.helpers import tiny_backbone, tiny_data


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


class _Crash(Exception):
    pass


def test_interrupted_extraction_resumes_to_identical_store(tiny, tmp_path):
    tmp, model, backbone = tiny
    data = tiny_data(tmp_path)
    whole = tmp_path / "whole.zarr"
    run_part("tiny", model, "none", backbone, data, whole, 0, 1, 4, 0)
    store.finalize(whole, tmp_path / "whole.json")

    calls = {"n": 0}
    original = backbone.extract

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Crash
        return original(*args, **kwargs)

    broken = tmp_path / "broken.zarr"
    backbone.extract = crashing
    try:
        with pytest.raises(_Crash):
            run_part("tiny", model, "none", backbone, data, broken, 0, 1, 4, 0)
    finally:
        backbone.extract = original
    with pytest.raises(RuntimeError, match="incomplete store"):
        store.finalize(broken, tmp_path / "broken.json")
    assert not (tmp_path / "broken.json").exists()
    done_before = 8 - len(store.missing_chunks(broken, _layout(model, data)))
    stats = run_part("tiny", model, "none", backbone, data, broken, 0, 1, 4, 0)
    assert stats["chunks"] == 8 - done_before  # only unfinished chunks were redone
    store.finalize(broken, tmp_path / "broken.json")
    assert _store_bytes(broken) == _store_bytes(whole)


def test_parts_write_disjoint_ranges_and_match_one_part(tiny, tmp_path):
    tmp, model, backbone = tiny
    data = tiny_data(tmp_path)
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    run_part("tiny", model, "none", backbone, data, one, 0, 1, 4, 0)
    first = run_part("tiny", model, "none", backbone, data, two, 0, 2, 4, 0)
    with pytest.raises(RuntimeError, match="incomplete"):
        store.finalize(two, tmp_path / "two.json")
    second = run_part("tiny", model, "none", backbone, data, two, 1, 2, 4, 0)
    assert first["chunks"] + second["chunks"] == 7  # 20 train + 8 val images, 4 per chunk
    store.finalize(two, tmp_path / "two.json")
    assert _store_bytes(one) == _store_bytes(two)


def test_store_layout_and_attrs(tiny, tmp_path):
    tmp, model, backbone = tiny
    data = tiny_data(tmp_path)
    path = tmp_path / "s.zarr"
    run_part("tiny", model, "none", backbone, data, path, 0, 1, 4, 0)
    manifest = store.finalize(path, tmp_path / "s.json")
    group = store.open_store(path)
    arr = group["training/layer_02"]
    assert arr.dtype == np.float16 and arr.shape == (20, 16, 32) and arr.chunks == (4, 16, 32)
    attrs = group.attrs
    assert attrs["model"] == "tiny" and attrs["grid"] == 4 and attrs["layers"][0] == "layer_00"
    order = attrs["training_order"]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    ids = data.attrs["training_image_ids"]
    assert attrs["training_image_ids"] == [ids[i] for i in order]
    # labels are stored in store order next to the features
    assert np.array_equal(group["training/labels"][:], data["training/labels"][:][order])
    assert manifest["bytes"] > 0


def _layout(model, data):
    from layerprobe.extract import make_layout

    return make_layout("tiny", model, "none", data, 4, 0)
