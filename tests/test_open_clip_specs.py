"""kind open_clip: specs come from open_clip's own model configs (any ViT arch it knows), and the
backbone's layers are open_clip's / timm's own block outputs, for native and timm image towers."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch

from layerprobe.models.backbones import load_backbone
from layerprobe.models.specs import UnknownModel, model_spec
from layerprobe.models.specs import openclip as spec_oc

SRC = str(Path(__file__).resolve().parents[1] / "src")
TEXT = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


def _spec(arch, pretrained="none", name="x"):
    return model_spec(name, {"kind": "open_clip", "arch": arch, "pretrained": pretrained})


# 1. every bundled config: a spec or a refusal ------------------------------------------------

def test_every_bundled_arch_has_a_spec_or_is_refused():
    accepted, refused, t0 = [], [], time.perf_counter()
    for arch in open_clip.list_models():
        try:
            spec = spec_oc.open_clip_spec("x", {"arch": arch, "pretrained": "none"})
        except UnknownModel as e:
            assert "models.x.arch" in str(e)
            refused.append(arch)
            continue
        assert spec.depth > 0 and spec.dim > 0, arch
        # the patch grid covers the image (SO400M-14 at 384 px: 27 patches of 14, 6 px dropped)
        assert spec.grid * spec.patch_size <= spec.image_size < (spec.grid + 1) * spec.patch_size, arch
        assert spec.params > 0 and spec.flops > 0, arch
        accepted.append(arch)
    elapsed = time.perf_counter() - t0
    print(f"\n{len(accepted)} accepted, {len(refused)} refused in {elapsed:.1f}s; refused: {refused}")
    # ViTs of both kinds are accepted, convnets are not
    assert {"ViT-B-16-quickgelu", "ViT-L-14-336-quickgelu", "ViT-B-16-SigLIP", "EVA02-B-16",
            "PE-Core-B-16", "coca_ViT-B-32"} <= set(accepted)
    assert {"RN50", "convnext_base", "swin_base_patch4_window7_224", "MobileCLIP-S1"} <= set(refused)
    b16, l14 = _spec("ViT-B-16-quickgelu", "openai"), _spec("ViT-L-14-336-quickgelu", "openai")
    assert (b16.depth, b16.dim, b16.image_size, b16.patch_size, b16.has_cls) == (12, 768, 224, 16, True)
    assert (l14.depth, l14.dim, l14.image_size, l14.patch_size, l14.has_cls) == (24, 1024, 336, 14, True)
    siglip = _spec("ViT-B-16-SigLIP", "webli")
    assert (siglip.depth, siglip.dim, siglip.image_size, siglip.patch_size, siglip.has_cls) == (12, 768, 224, 16, False)


def test_native_params_match_the_model_open_clip_builds():
    """The closed-form count of native configs (vision + text tower, CoCa decoder) against the
    model open_clip builds on the meta device, for a spread of configs."""
    for arch in ["ViT-B-32", "ViT-H-14-CLIPA", "ViT-bigG-14", "ViT-M-16-alt", "coca_ViT-L-14", "ViT-L-14-worldwide"]:
        with torch.device("meta"):
            built = open_clip.create_model(arch, pretrained=None, device="meta")
        real = sum(p.numel() for p in built.parameters())
        assert _spec(arch).params == pytest.approx(real, rel=0.01), arch


def test_native_spec_reads_no_open_clip_and_registry_matches():
    """DAG time: a native arch with a pretrained tag costs neither torch nor open_clip imports; the
    pretrained registry read from open_clip's source equals the one open_clip builds."""
    code = ("import sys; from layerprobe.models.specs import model_spec\n"
            "for a in ['ViT-B-16-quickgelu', 'ViT-L-14-quickgelu', 'ViT-L-14-336-quickgelu']:\n"
            "    model_spec('m', {'kind': 'open_clip', 'arch': a, 'pretrained': 'openai'})\n"
            "assert 'open_clip' not in sys.modules and 'torch' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC})
    source = spec_oc._registry_from_source(str(spec_oc._package_dir() / "pretrained.py"))
    assert source == spec_oc._registry_from_api(open_clip)
    assert source["ViT-B-16-quickgelu"]["openai"] is True


# 2. tiny models loaded by path through open_clip.create_model ----------------------------------

def _register_timm(name: str, **args) -> None:
    """A tiny timm ViT under `name` (open_clip's TimmModel calls timm.create_model(name, ...))."""
    from timm.models import is_model, register_model
    from timm.models.vision_transformer import VisionTransformer

    if is_model(name):
        return

    def build(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        return VisionTransformer(**{**args, **kwargs})

    build.__name__ = name
    build.__module__ = __name__
    register_model(build)


TINY_NATIVE = {  # unlike the demo's: no ln_pre, avg pooling, layer scale, GELU, 6x6 grid of 4 px
    "embed_dim": 16, "quick_gelu": False,
    "vision_cfg": {"image_size": 24, "patch_size": 4, "width": 32, "layers": 3, "head_width": 16,
                   "no_ln_pre": True, "pool_type": "avg", "ls_init_value": 0.5},
    "text_cfg": TEXT,
}
TIMM = {  # SigLIP-style (no class token, MAP pooling) and a class token plus two registers
    "lp_test_timm_siglip": dict(img_size=24, patch_size=4, embed_dim=32, depth=3, num_heads=2, class_token=False,
                                global_pool="map"),
    "lp_test_timm_cls_reg": dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, class_token=True,
                                 reg_tokens=2, global_pool="token"),
}


def _tiny_model(tmp: Path, arch: str, cfg: dict) -> dict:
    """Register the config, save seeded random weights, return the config entry (pretrained = the file)."""
    (tmp / f"{arch}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / f"{arch}.json")
    torch.manual_seed(0)
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    weights = tmp / f"{arch}.pt"
    torch.save(model.state_dict(), weights)
    return {"kind": "open_clip", "arch": arch, "pretrained": str(weights)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oc")
    models = {"native": _tiny_model(tmp, "lp-test-native-noln-avg", TINY_NATIVE)}
    for name, args in TIMM.items():
        _register_timm(name, **args)
        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": args["img_size"], "timm_model_name": name,
                                               "timm_model_pretrained": False, "timm_pool": args["global_pool"],
                                               "timm_proj": "none"},
               "text_cfg": TEXT}
        models[name] = _tiny_model(tmp, f"lp-test-{name}", cfg)
    return models


def _check_spec(name, model, backbone):
    spec = model_spec(name, model)
    assert spec.dims() == backbone.dims()
    assert (spec.grid, spec.image_size, spec.has_cls) == (backbone.grid, backbone.image_size, backbone.has_cls)
    real = sum(p.numel() for p in open_clip.create_model(model["arch"]).parameters())
    assert spec.params == pytest.approx(real, rel=0.02)


def test_tiny_native_layers_are_open_clips_block_outputs(tiny_models):
    model = tiny_models["native"]
    backbone = load_backbone("native", model, "cpu")
    assert backbone.has_cls and backbone.grid == 6
    images = torch.randint(0, 256, (2, 24, 24, 3), dtype=torch.uint8)
    keys = [f"layer_{i:02d}" for i in range(4)]
    tokens, cls = backbone.extract(images, None, keys)
    x = backbone.normalize(images)
    ref = backbone.visual.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True, output_fmt="NLC",
                                                output_extra_tokens=True, normalize_intermediates=False)
    for i in range(3):
        assert torch.allclose(tokens[f"layer_{i + 1:02d}"], ref["image_intermediates"][i], atol=1e-5)
        assert torch.allclose(cls[f"layer_{i + 1:02d}"], ref["image_intermediates_prefix"][i][:, 0], atol=1e-5)
    assert not torch.allclose(tokens["layer_03"], tokens["layer_01"], atol=1e-3)
    with torch.no_grad():
        emb = backbone.visual._embeds(x)  # conv, class token, positional embedding, (no) ln_pre
    assert torch.allclose(tokens["layer_00"], emb[:, 1:], atol=1e-6)
    assert torch.allclose(cls["layer_00"], emb[:, 0], atol=1e-6)
    _check_spec("native", model, backbone)


@pytest.mark.parametrize("timm_name", list(TIMM))
def test_tiny_timm_layers_are_timms_block_outputs(tiny_models, timm_name):
    model, args = tiny_models[timm_name], TIMM[timm_name]
    backbone = load_backbone(timm_name, model, "cpu")
    trunk = backbone.visual.trunk
    assert backbone.has_cls == args["class_token"]
    assert backbone.grid == args["img_size"] // args["patch_size"]
    size = args["img_size"]
    images = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    keys = [f"layer_{i:02d}" for i in range(4)]
    tokens, cls = backbone.extract(images, None, keys)
    assert set(cls) == (set(keys) if args["class_token"] else set())
    x = backbone.normalize(images)
    ref = trunk.forward_intermediates(x, indices=[0, 1, 2], norm=False, output_fmt="NLC", return_prefix_tokens=True,
                                      intermediates_only=True)
    for i, out in enumerate(ref):
        # timm returns (spatial, prefix) pairs only when the trunk has prefix tokens
        spatial, prefix = out if isinstance(out, tuple) else (out, None)
        assert (prefix is None) == (trunk.num_prefix_tokens == 0)
        assert tokens[f"layer_{i + 1:02d}"].shape == (2, backbone.grid ** 2, 32)
        assert torch.allclose(tokens[f"layer_{i + 1:02d}"], spatial, atol=1e-5)
        if args["class_token"]:
            assert prefix.shape[1] == 1 + args["reg_tokens"]  # class token first, then registers
            assert torch.allclose(cls[f"layer_{i + 1:02d}"], prefix[:, 0], atol=1e-5)
    with torch.no_grad():
        emb = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(x)))
    assert torch.allclose(tokens["layer_00"], emb[:, trunk.num_prefix_tokens:], atol=1e-6)
    _check_spec(timm_name, model, backbone)


# 3. refusals ----------------------------------------------------------------------------------

def _error(arch, pretrained="none"):
    with pytest.raises(UnknownModel) as e:
        spec_oc.open_clip_spec("x", {"arch": arch, "pretrained": pretrained})
    return str(e.value)


def test_quickgelu_pairing_names_both_keys_and_the_fix():
    msg = _error("ViT-B-16", "openai")
    assert "models.x.arch" in msg and "models.x.pretrained" in msg and "use ViT-B-16-quickgelu" in msg
    msg = _error("ViT-L-14-quickgelu", "laion2b_s32b_b82k")  # GELU weights on a QuickGELU arch
    assert "models.x.arch" in msg and "models.x.pretrained" in msg and "use ViT-L-14" in msg
    _spec("ViT-B-16-quickgelu", "openai")
    _spec("ViT-L-14", "laion2b_s32b_b82k")
    _spec("ViT-B-16", "/weights/vit_b16_finetuned.pt")  # a local file: no tag to check


def test_unknown_tag_arch_and_non_vits_are_refused():
    msg = _error("ViT-B-16-quickgelu", "laion9000")
    assert "models.x.pretrained" in msg and "openai" in msg and "list_pretrained_tags_by_model" in msg
    msg = _error("ViT-B-61-quickgelu")
    assert "models.x.arch" in msg and "open_clip.list_models()" in msg and "ViT-B-16-quickgelu" in msg
    for arch in ("RN50", "RN50-quickgelu", "convnext_base", "swin_base_patch4_window7_224"):
        msg = _error(arch)
        assert "models.x.arch" in msg and "not a ViT with a patch grid" in msg
    assert "hf_vision" in _error("hf-hub:timm/ViT-B-16-SigLIP")


# 4. parameter counts (RAM requests) --------------------------------------------------------------

def test_params_are_open_clips_counts():
    assert _spec("ViT-B-16-quickgelu", "openai").params == pytest.approx(149.6e6, rel=0.02)
    assert _spec("ViT-L-14-336-quickgelu", "openai").params == pytest.approx(427.9e6, rel=0.02)
