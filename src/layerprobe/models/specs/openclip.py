"""open_clip image towers: the spec is read from open_clip's own model config, never a table.

- Native `VisionTransformer` configs (vision_cfg with layers/width/patch_size/image_size): read
  from the JSON bundled with open_clip *without importing it* (importing open_clip imports torch
  and timm, ~5 s per Snakemake invocation); the model always prepends a class token.
- timm trunks (vision_cfg.timm_model_name): open_clip builds the whole model on the `meta` device
  (no weights, no memory) and the trunk's own structure is read: blocks, embed_dim, patch grid,
  class token. Only ViT-like trunks with a patch grid are accepted.
- A config registered with `open_clip.add_model_config` is found once open_clip is imported.
- The pretrained tag is checked against open_clip's pretrained registry (read from its source by
  `ast` when open_clip is not imported, else through its public API): unknown tags and a QuickGELU
  mismatch between weights and architecture are config errors, not silent GELU swaps.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from .core import ModelSpec, UnknownModel, forward_flops, transformer_params

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


# ---------------------------------------------------------------------------------------------
# open_clip's model configs and pretrained registry, without importing open_clip when possible
# ---------------------------------------------------------------------------------------------

def _imported():
    """open_clip if this process already imported it (then its registry is the truth: it also
    holds configs added with add_model_config), else None."""
    return sys.modules.get("open_clip")


@lru_cache(maxsize=1)
def _package_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package; does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModel("kind open_clip: the open_clip package is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _is_model_config(cfg: Any) -> bool:
    # open_clip's own rule (_rescan_model_configs)
    return isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))


@lru_cache(maxsize=None)
def _bundled_config(arch: str) -> dict[str, Any] | None:
    path = _package_dir() / "model_configs" / f"{arch}.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    return cfg if _is_model_config(cfg) else None


def known_models() -> list[str]:
    """open_clip.list_models(): bundled configs (plus registered ones once open_clip is imported)."""
    oc = _imported()
    if oc is not None:
        return list(oc.list_models())
    names = []
    for path in sorted((_package_dir() / "model_configs").glob("*.json")):
        try:
            if _is_model_config(json.loads(path.read_text())):
                names.append(path.stem)
        except ValueError:
            continue
    return names


def model_config(arch: str) -> dict[str, Any] | None:
    oc = _imported()
    if oc is not None:
        cfg = oc.get_model_config(arch)
        if cfg is not None:
            return cfg
    return _bundled_config(arch)


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")  # open_clip.pretrained._clean_tag


def pretrained_registry() -> dict[str, dict[str, bool]]:
    """{arch: {tag: quick_gelu}} of open_clip's pretrained weights."""
    oc = _imported()
    if oc is not None:
        return _registry_from_api(oc)
    try:
        registry = _registry_from_source(str(_package_dir() / "pretrained.py"))
    except (OSError, SyntaxError, ValueError):
        registry = {}
    if not registry:  # source layout changed: pay for the import rather than guess
        import open_clip

        return _registry_from_api(open_clip)
    return registry


def _registry_from_api(oc) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for arch, tag in oc.list_pretrained():
        out.setdefault(arch, {})[tag] = bool(oc.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    return out


class _Opaque:
    """A value the registry reader does not evaluate (URLs built by expressions, constants)."""


@lru_cache(maxsize=4)
def _registry_from_source(path: str) -> dict[str, dict[str, bool]]:
    """Evaluate open_clip/pretrained.py's module-level dict literals with `ast` (no import).

    Calls of `dict` or of the cfg helpers (`_pcfg`, `_slpcfg`, ...) are read as dicts of their
    keyword arguments; that is all they are. The `-quickgelu` aliases are derived the way
    pretrained.py derives them. tests/test_open_clip_specs.py checks the result equals the
    registry open_clip itself builds."""
    tree = ast.parse(Path(path).read_text())
    env: dict[str, Any] = {}

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env.get(node.id, _Opaque)
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values):
                if k is None:
                    spread = value(v)
                    if isinstance(spread, dict):
                        out.update(spread)
                else:
                    out[value(k)] = value(v)
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id == "dict" or node.func.id.endswith("cfg")):
            out = {}
            for kw in node.keywords:
                if kw.arg is None:
                    spread = value(kw.value)
                    if isinstance(spread, dict):
                        out.update(spread)
                else:
                    out[kw.arg] = value(kw.value)
            return out
        return _Opaque

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            env[stmt.targets[0].id] = value(stmt.value)
        elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Subscript)
              and isinstance(stmt.targets[0].value, ast.Name) and stmt.targets[0].value.id == "_PRETRAINED"):
            env["_PRETRAINED"][value(stmt.targets[0].slice)] = value(stmt.value)
    pretrained = env.get("_PRETRAINED")
    if not isinstance(pretrained, dict):
        raise ValueError("no _PRETRAINED dict")
    out: dict[str, dict[str, bool]] = {}
    sources: dict[str, dict[str, dict[str, str]]] = {}
    for arch, tags in pretrained.items():
        if not isinstance(tags, dict):
            raise ValueError(f"_PRETRAINED[{arch!r}] not read")
        out[arch] = {tag: (cfg.get("quick_gelu", False) is True) if isinstance(cfg, dict) else False
                     for tag, cfg in tags.items()}
        sources[arch] = {tag: {k: cfg[k] for k in ("url", "hf_hub") if isinstance(cfg.get(k), str) and cfg[k]}
                         for tag, cfg in tags.items() if isinstance(cfg, dict)}
    for arch, tags in list(out.items()):  # pretrained.py: _PRETRAINED_quickgelu
        quick = {tag: True for tag, q in tags.items() if q}
        if quick:
            out[arch + "-quickgelu"] = quick
            sources[arch + "-quickgelu"] = {tag: sources[arch].get(tag, {}) for tag in quick}
    _SOURCES[path] = sources
    return out


_SOURCES: dict[str, dict[str, dict[str, dict[str, str]]]] = {}


def pretrained_source(arch: str, tag: str) -> dict[str, str]:
    """Where open_clip downloads a pretrained tag from: {"hf_hub": "org/repo/[file]"} and/or
    {"url": ...} (open_clip prefers the hub when both exist); {} when unknown."""
    oc = _imported()
    if oc is not None:
        cfg = oc.get_pretrained_cfg(arch, tag) or {}
        return {k: cfg[k] for k in ("url", "hf_hub") if cfg.get(k)}
    path = str(_package_dir() / "pretrained.py")
    try:
        _registry_from_source(path)
    except (OSError, SyntaxError, ValueError):
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        return {k: cfg[k] for k in ("url", "hf_hub") if cfg.get(k)}
    return _SOURCES.get(path, {}).get(arch, {}).get(_clean_tag(tag), {})


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------

def tiny_model_config(tiny: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config of the demo's tiny ViT (backbones.tiny_clip writes it as JSON
    beside the weights; the spec computes it from the tiny block, before that file exists)."""
    return {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": tiny["image_size"], "layers": tiny["layers"], "width": tiny["width"],
                       "head_width": tiny["width"] // tiny["heads"], "patch_size": tiny["patch_size"]},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }


def open_clip_spec(name: str, model: dict[str, Any]) -> ModelSpec:
    if model.get("tiny") is not None:
        return _native_spec(tiny_model_config(model["tiny"]))
    arch = str(model.get("arch"))
    beside = Path(str(model.get("pretrained")))
    beside = beside.with_name(beside.stem + ".config") / f"{arch}.json"  # backbones.tiny_clip.config_path
    if beside.is_file():  # an architecture saved beside its weights file (as the tiny builder does)
        return _native_spec(json.loads(beside.read_text()))
    where = f"models.{name}"
    if arch.startswith(("hf-hub:", "local-dir:")):
        raise UnknownModel(f"{where}.arch: {arch!r}: open_clip models from 'hf-hub:'/'local-dir:' are not supported "
                           f"here (their config is fetched at load time); use kind hf_vision for a Hugging Face "
                           f"vision encoder, or a named open_clip arch with pretrained = a local weights file")
    cfg = model_config(arch)
    if cfg is None:
        names = known_models()
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
        hint = f"; close matches: {close}" if close else ""
        raise UnknownModel(f"{where}.arch: unknown open_clip architecture {arch!r}; the known names are open_clip's "
                           f"model configs (open_clip.list_models(), {len(names)} names){hint}")
    vision = cfg["vision_cfg"]
    if "timm_model_name" not in vision and (isinstance(vision.get("layers"), (list, tuple))
                                            or not all(k in vision for k in ("width", "patch_size"))):
        raise UnknownModel(f"{where}.arch: {arch!r} is not a ViT with a patch grid (its image tower is "
                           f"open_clip's ModifiedResNet); layer probes need per-block patch tokens")
    if "hf_model_name" in cfg["text_cfg"]:
        raise UnknownModel(f"{where}.arch: {arch!r} has a Hugging Face text tower "
                           f"({cfg['text_cfg']['hf_model_name']!r}) whose size (the job's RAM request) is only known "
                           f"from the hub; not supported")
    _check_pretrained(where, arch, cfg, str(model.get("pretrained")))
    if "timm_model_name" in vision:
        return _timm_spec(where, arch, vision["timm_model_name"])
    return _native_spec(cfg)


def _check_pretrained(where: str, arch: str, cfg: dict[str, Any], pretrained: str) -> None:
    """A pretrained tag must exist for the arch, and its QuickGELU must match the arch's (open_clip
    itself only warns, then runs GELU on QuickGELU-trained weights)."""
    if pretrained == "none":
        return
    registry = pretrained_registry()
    tags = registry.get(arch, {})
    tag = _clean_tag(pretrained)
    arch_quick = bool(cfg.get("quick_gelu", False))
    if tag in tags:
        if tags[tag] != arch_quick:
            raise UnknownModel(_quickgelu_message(where, arch, pretrained, tags[tag], arch_quick))
        return
    if os.path.isfile(pretrained) or os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES):
        return  # a local weights file (open_clip checks tags first, then files; existence at load time)
    sibling = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch + "-quickgelu"
    if tag in registry.get(sibling, {}) and registry[sibling][tag] != arch_quick:
        raise UnknownModel(_quickgelu_message(where, arch, pretrained, registry[sibling][tag], arch_quick))
    raise UnknownModel(f"{where}.pretrained: {pretrained!r} is neither a pretrained tag open_clip knows for "
                       f"{arch!r} (open_clip.list_pretrained_tags_by_model: {sorted(tags)}), nor a weights file, "
                       f"nor 'none' (random weights)")


def _quickgelu_message(where: str, arch: str, pretrained: str, tag_quick: bool, arch_quick: bool) -> str:
    if tag_quick:
        fix = arch + "-quickgelu"
        why = f"the {pretrained!r} weights were trained with QuickGELU but {arch!r} uses GELU"
    else:
        fix = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch
        why = f"the {pretrained!r} weights were trained with GELU but {arch!r} uses QuickGELU"
    known = model_config(fix) is not None
    advice = f"use {fix}" if known else "register a config with matching 'quick_gelu'"
    return f"{where}.arch / {where}.pretrained: {why} (open_clip pretrained cfg 'quick_gelu'); {advice}"


def _side(size: Any) -> int:
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def _block_params(width: int, mlp: int, layer_scale: bool = False) -> float:
    # attention in/out projections, MLP, with biases and the two LayerNorms
    return transformer_params(1, width, mlp) + 9 * width + mlp + (2 * width if layer_scale else 0)


def _text_params(text: dict[str, Any], embed_dim: int) -> float:
    width, layers = text.get("width", 512), text.get("layers", 12)
    mlp = int(width * text.get("mlp_ratio", 4.0))
    return (text.get("vocab_size", 49408) * width + text.get("context_length", 77) * width
            + layers * _block_params(width, mlp, text.get("ls_init_value") is not None)
            + 2 * width + width * embed_dim + (width if text.get("embed_cls") else 0))


def _native_spec(cfg: dict[str, Any]) -> ModelSpec:
    """open_clip's VisionTransformer: conv patch embedding, class token, positional embedding,
    (ln_pre,) `layers` residual blocks, ln_post, projection; plus the text tower (the job loads it)."""
    v = cfg["vision_cfg"]
    width, depth = int(v["width"]), int(v["layers"])
    size, patch = _side(v.get("image_size", 224)), _side(v["patch_size"])
    grid, embed = size // patch, int(cfg["embed_dim"])
    mlp = int(width * v.get("mlp_ratio", 4.0))
    blocks = depth * _block_params(width, mlp, v.get("ls_init_value") is not None)
    vision = 3 * patch * patch * width + (grid * grid + 1) * width + 4 * width + blocks + width * embed
    if v.get("attentional_pool"):  # CoCa: attention pooler from width to embed_dim over 256 queries
        queries = v.get("attn_pooler_queries", 256)
        vision += queries * embed + 2 * embed * embed + 2 * width * embed + embed * embed
    text = _text_params(cfg["text_cfg"], embed)
    multimodal = cfg.get("multimodal_cfg")
    if multimodal:  # CoCa's decoder: self- and cross-attention blocks and the vocabulary head
        mw = multimodal.get("width", 512)
        text += (2 * multimodal.get("layers", 12) * _block_params(mw, 4 * mw)
                 + mw * multimodal.get("vocab_size", 49408) + 2 * mw)
    base = transformer_params(depth, width, mlp)
    return ModelSpec("open_clip", depth, width, size, patch, True, params=float(vision + text),
                     flops=forward_flops(base, grid * grid + 1))


def _timm_spec(where: str, arch: str, timm_name: str) -> ModelSpec:
    """Build the model with open_clip on the meta device (structure only) and read its timm trunk."""
    import open_clip
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInitOnMeta(TorchFunctionMode):
        """In-place ops on meta tensors (weight init: normal_, trunc_normal_'s uniform_/erfinv_/
        clamp_, ...) change no shape; skipping them makes the build ~10x faster."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            fname = getattr(func, "__name__", "")
            if (fname.endswith("_") and not fname.endswith("__") and args and isinstance(args[0], torch.Tensor)
                    and args[0].is_meta):
                return args[0]
            return func(*args, **(kwargs or {}))

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "No pretrained weights loaded ... initialized randomly"
    try:
        with torch.device("meta"), SkipInitOnMeta():
            built = open_clip.create_model(arch, pretrained=None, device="meta")
    finally:
        logging.disable(previous)
    trunk = built.visual.trunk
    info = timm_trunk_info(trunk)
    if info is None:
        raise UnknownModel(f"{where}.arch: {arch!r} is not a ViT with a patch grid (its image tower is timm's "
                           f"{timm_name!r}, a {type(trunk).__name__}); layer probes need per-block patch tokens")
    depth, width, size, patch, prefix, has_cls = info
    grid = size // patch
    block_params = float(sum(p.numel() for p in trunk.blocks.parameters()))
    return ModelSpec("open_clip", depth, width, size, patch, has_cls,
                     params=float(sum(p.numel() for p in built.parameters())),
                     flops=forward_flops(block_params, grid * grid + prefix))


def timm_trunk_info(trunk) -> tuple[int, int, int, int, int, bool] | None:
    """(depth, width, image_size, patch_size, prefix tokens, has_cls) of a ViT-like timm trunk
    (uniform blocks over a patch grid plus prefix tokens), or None for convnets, Swin, FastViT."""
    blocks, embed = getattr(trunk, "blocks", None), getattr(trunk, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if (blocks is None or grid is None or not hasattr(trunk, "num_prefix_tokens") or not hasattr(blocks, "__len__")
            or not hasattr(trunk, "forward_intermediates") or not getattr(trunk, "embed_dim", None)):
        return None
    size = _side(embed.img_size)
    patch = size // _side(grid)  # a hybrid (conv-stem) embedding reports patch_size 1
    return (len(blocks), int(trunk.embed_dim), size, patch, int(trunk.num_prefix_tokens),
            getattr(trunk, "cls_token", None) is not None)
