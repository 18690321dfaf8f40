"""kind: hf_vision on tiny random DINOv2 (with and without registers), SigLIP (a full text+vision
checkpoint) and CLIP vision models, saved like hub snapshots and loaded by path through the real
loading code (`load_backbone`, `model_spec`).

transformers' own hidden-state conventions (checked here, transformers 5): `output_hidden_states`
records the first block's input and every block's output with hooks, and for all four families
hidden_states[-1] is the last block's raw output, before the final norm (DINOv2 `layernorm` and
SigLIP `post_layernorm` are applied to last_hidden_state only; CLIP's `post_layernorm` only to the
pooled CLS, so CLIP's last_hidden_state is itself pre-norm). CLIP's hidden_states[0] is after
`pre_layrnorm`. So layer_i == hidden_states[i] exactly, patches after CLS and registers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from layerprobe.models.backbones import load_backbone
from layerprobe.models.backbones.hf_vision import HfVisionBackbone
from layerprobe.models.layers import layer_key
from layerprobe.models.specs import UnknownModel, model_spec
from layerprobe.models.specs.hub import pinned_dir
from layerprobe.models.tiny.hf_vision import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_clip_vision,
    build_dinov2,
    build_siglip,
)

FAMILIES = ["dinov2_with_registers", "dinov2", "siglip", "clip", "clip_full"]
# What each tiny model is built as: (image_size fed, patch_size, layers, width, has_cls, registers).
BUILT = {"dinov2_with_registers": (28, 4, 3, 32, True, 4), "dinov2": (28, 4, 3, 32, True, 0),
         "siglip": (32, 8, 3, 32, False, 0), "clip": (32, 8, 3, 32, True, 0),
         "clip_full": (32, 8, 3, 32, True, 0)}
MEAN_STD = {"dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD), "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
            "siglip": ([0.5] * 3, [0.5] * 3), "clip": (CLIP_MEAN, CLIP_STD),
            "clip_full": (CLIP_MEAN, CLIP_STD)}
ATOL = 1e-5


def _build(family: str, out: Path) -> Path:
    if family == "dinov2_with_registers":
        return build_dinov2(out, registers=4)
    if family == "dinov2":
        return build_dinov2(out)
    if family == "siglip":
        return build_siglip(out)  # a full SigLIP checkpoint (model_type siglip)
    return build_clip_vision(out, full=family == "clip_full")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_vision")
    return {family: _build(family, root / family) for family in FAMILIES}


def _entry(path: Path, layers: list[int] | None = None) -> dict:
    return {"kind": "hf_vision", "hub_id": str(path), "layers": layers or [0]}


@pytest.fixture(scope="module")
def backbones(saved: dict[str, Path]) -> dict[str, HfVisionBackbone]:
    return {family: load_backbone(family, _entry(path), device="cpu") for family, path in saved.items()}


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


def _final_norm_applies_after(bb: HfVisionBackbone, out, last: torch.Tensor) -> None:
    """The model's own outputs are the final norm of `last` (so `last` is pre-norm)."""
    if bb.family == "clip":  # post_layernorm on the pooled CLS only
        torch.testing.assert_close(bb.model.post_layernorm(last[:, 0]), out.pooler_output, atol=ATOL, rtol=0)
        torch.testing.assert_close(last, out.last_hidden_state, atol=ATOL, rtol=0)
        return
    norm = bb.model.post_layernorm if bb.family == "siglip" else bb.model.layernorm
    torch.testing.assert_close(norm(last), out.last_hidden_state, atol=ATOL, rtol=0)
    assert (last - out.last_hidden_state).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_equal_transformers_hidden_states(backbones, family: str) -> None:
    bb = backbones[family]
    size, patch, depth, width, has_cls, registers = BUILT[family]
    images = _images(3, size)
    keys = [layer_key(0), layer_key(2), layer_key(depth)]
    tokens, cls = bb.extract(images, None, keys)
    pixels = bb.normalize(images)
    raw: list[torch.Tensor] = []  # the last block's own output, from a hook
    hook = bb.blocks[-1].register_forward_hook(lambda m, a, out: raw.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = bb.model(pixel_values=pixels, output_hidden_states=True)
    finally:
        hook.remove()
    hidden = out.hidden_states
    assert len(hidden) == depth + 1
    first = int(has_cls) + registers
    assert hidden[0].shape == (3, first + (size // patch) ** 2, width)  # [CLS, registers, patches]
    # hidden_states[-1] is the last block's raw output, and the final norm comes after it.
    torch.testing.assert_close(hidden[-1], raw[0], atol=0, rtol=0)
    _final_norm_applies_after(bb, out, hidden[-1])
    assert set(tokens) == set(keys)
    for key in keys:
        i = int(key.split("_")[1])
        assert tokens[key].shape == (3, bb.grid ** 2, width) and tokens[key].dtype == torch.float32
        torch.testing.assert_close(tokens[key], hidden[i][:, first:], atol=ATOL, rtol=0)
    if has_cls:
        assert set(cls) == set(keys)
        for key in keys:
            torch.testing.assert_close(cls[key], hidden[int(key.split("_")[1])][:, 0], atol=ATOL, rtol=0)
    else:
        assert cls == {}
    # Batch independence: one image alone gives the same rows.
    alone, _ = bb.extract(images[1:2], None, [layer_key(depth)])
    torch.testing.assert_close(alone[layer_key(depth)][0], tokens[layer_key(depth)][1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_early_stop_runs_no_deeper_block(backbones, family: str) -> None:
    bb = backbones[family]
    images = _images(2, bb.image_size, seed=1)
    full, _ = bb.extract(images, None, list(bb.dims()))
    final_norm = {"siglip": "post_layernorm", "clip": "post_layernorm"}.get(bb.family, "layernorm")
    watched = [*bb.blocks, getattr(bb.model, final_norm)]
    calls = [0] * len(watched)
    hooks = [m.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, m in enumerate(watched)]
    try:
        part, _ = bb.extract(images, None, [layer_key(1)])
        assert calls == [1, 0, 0, 0]  # block 1 ran; blocks 2-3 and the final norm never did
        calls[:] = [0] * len(watched)
        bb.extract(images, None, [layer_key(0)])
        assert calls == [0, 0, 0, 0]  # the embeddings are captured before block 1 runs
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(part[layer_key(1)], full[layer_key(1)])


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_built_model_and_backbone(saved, backbones, family: str) -> None:
    bb = backbones[family]
    size, patch, depth, width, has_cls, registers = BUILT[family]
    spec = model_spec(family, _entry(saved[family], [0, depth]))
    assert (spec.kind, spec.depth, spec.dim, spec.image_size, spec.patch_size, spec.has_cls) == \
        ("hf_vision", depth, width, size, patch, has_cls)
    assert spec.dims() == bb.dims() and spec.grid == bb.grid and spec.has_cls == bb.has_cls
    assert bb.image_size == size and bb.registers == registers
    # params: what the loading code builds (vision tower only for the full SigLIP checkpoint), to ~5%.
    built = sum(p.numel() for p in bb.model.parameters())
    assert abs(spec.params - built) / built < 0.05, (spec.params, built)
    assert spec.flops > 0


def test_pinned_dinov2_large() -> None:
    assert (pinned_dir("facebook/dinov2-large") / "preprocessor_config.json").is_file()
    spec = model_spec("dino", {"kind": "hf_vision", "hub_id": "facebook/dinov2-large", "layers": [12]})
    assert (spec.depth, spec.dim, spec.image_size, spec.patch_size, spec.has_cls) == (24, 1024, 224, 14, True)
    assert spec.grid == 16
    assert 2.9e8 < spec.params < 3.1e8  # ViT-L/14: ~304M


def _vit_dir(out: Path) -> Path:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_unsupported_model_types(tmp_path: Path) -> None:
    vit = _vit_dir(tmp_path / "vit")
    for call in (lambda: model_spec("vit", _entry(vit)), lambda: HfVisionBackbone("vit", str(vit), device="cpu")):
        with pytest.raises(UnknownModel, match=r"models\.vit\.hub_id.*'vit'.*dinov2_with_registers.*siglip.*clip"):
            call()
    llava = tmp_path / "llava"
    llava.mkdir()
    shutil.copy(pinned_dir("llava-hf/llava-1.5-7b-hf") / "config.json", llava / "config.json")
    with pytest.raises(UnknownModel, match=r"models\.llava\.hub_id.*'llava'.*kind: llava"):
        model_spec("llava", _entry(llava))


def _copy_without(src: Path, dest: Path, *skip: str) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dest / f.name)
    return dest


def _edit_processor(path: Path, **fields) -> None:
    proc = path / "preprocessor_config.json"
    proc.write_text(json.dumps({**json.loads(proc.read_text()), **fields}))


def test_missing_processor_and_bad_resolution(saved, tmp_path: Path) -> None:
    bare = _copy_without(saved["clip"], tmp_path / "bare", "preprocessor_config.json")
    with pytest.raises(UnknownModel, match=r"models\.bare\.hub_id.*no preprocessor_config\.json"):
        model_spec("bare", _entry(bare))
    with pytest.raises(ValueError, match=r"models\.bare\.hub_id.*preprocessor_config\.json"):
        HfVisionBackbone("bare", str(bare), device="cpu", local_files_only=True)
    odd = _copy_without(saved["dinov2"], tmp_path / "odd")
    _edit_processor(odd, crop_size={"height": 30, "width": 30})  # 30 px, patch 4
    with pytest.raises(UnknownModel, match=r"models\.odd\.hub_id.*30.*not a multiple of patch_size 4"):
        model_spec("odd", _entry(odd))
    with pytest.raises(UnknownModel, match=r"models\.odd\.hub_id.*not a multiple"):
        HfVisionBackbone("odd", str(odd), device="cpu")
    # CLIP/SigLIP position embeddings are for config image_size only (DINOv2 interpolates).
    resized = _copy_without(saved["clip"], tmp_path / "resized")
    _edit_processor(resized, crop_size={"height": 48, "width": 48}, size={"shortest_edge": 48})
    with pytest.raises(UnknownModel, match=r"models\.resized\.hub_id.*48 px.*32 px"):
        model_spec("resized", _entry(resized))


def test_weights_that_do_not_fit_are_refused(saved, tmp_path: Path) -> None:
    """Weights under names the model class does not map would load as random init: refused."""
    from safetensors.torch import load_file, save_file

    renamed = _copy_without(saved["clip"], tmp_path / "renamed")
    weights = load_file(renamed / "model.safetensors")
    save_file({f"other.{k}": v for k, v in weights.items()}, renamed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"models\.renamed\.hub_id.*lacks weights"):
        HfVisionBackbone("renamed", str(renamed), device="cpu")


def test_wrong_image_size_refused(backbones) -> None:
    bb = backbones["siglip"]
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
        bb.extract(_images(1, 28), None, [layer_key(1)])


@pytest.mark.parametrize("family", FAMILIES)
def test_normalisation_is_the_processors(saved, backbones, family: str) -> None:
    bb = backbones[family]
    images = _images(2, bb.image_size, seed=3)
    images[0] = 0
    images[1, :, :, :] = 255
    fed: list[torch.Tensor] = []
    hook = bb.model.embeddings.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(args[0] if args else kwargs["pixel_values"]), with_kwargs=True)
    try:
        bb.extract(images, None, [layer_key(0)])
    finally:
        hook.remove()
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in MEAN_STD[family])
    torch.testing.assert_close(fed[0][0], ((0 - mean) / std).expand(3, bb.image_size, bb.image_size))
    torch.testing.assert_close(fed[0][1], ((1 - mean) / std).expand(3, bb.image_size, bb.image_size))
    if family == "siglip":
        assert fed[0][0].eq(-1).all() and fed[0][1].eq(1).all()
    # The checkpoint's own image processor gives the same pixel values for an image already at size.
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(saved[family]))
    random = _images(2, bb.image_size, seed=4)
    expected = processor(images=list(random.numpy()), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(bb.normalize(random), expected, atol=1e-5, rtol=0)


def test_padding_is_the_mean_colour(backbones) -> None:
    bb = backbones["dinov2"]
    boxes = torch.tensor([[0, 0, 28, 14], [4, 0, 20, 28]])  # (top, left, height, width)
    pixels = bb.normalize(_images(2, 28, seed=5), boxes)
    assert pixels[0, :, :, 16:].eq(0).all() and pixels[1, :, :4].eq(0).all() and pixels[1, :, 24:].eq(0).all()
    assert pixels[0, :, :, :14].ne(0).any()


def test_hub_ids_are_fetched_like_llava(saved) -> None:
    from layerprobe.models.weights import needs_fetch, source_id

    hub = {"kind": "hf_vision", "hub_id": "facebook/dinov2-large", "layers": [12]}
    assert needs_fetch(hub) and source_id(hub) == "facebook--dinov2-large"
    assert not needs_fetch(_entry(saved["dinov2"]))  # a local directory loads by path
