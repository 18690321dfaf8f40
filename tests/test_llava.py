"""LLaVA backbone on a tiny random model: every key equals the plain transformers forward of each
sample processed alone (no padding), at the image-token positions found in `input_ids`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerprobe.models.backbones.llava import LlavaBackbone, image_positions
from layerprobe.models.layers import PROJECTOR, layer_key, vision_key
from layerprobe.models.prompts import IMAGE_FIRST, PROMPT_FIRST, wrap_prompt
from layerprobe.models.tiny.llava import build_tiny_llava

TINY = {"image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 3, "text_width": 32,
        "text_layers": 3, "heads": 2, "seed": 0}
PROMPTS = ["Describe the image in detail", "wall",
           "Imagine what it would look like to see a chest of drawers in the room"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava") / "model", **TINY)


@pytest.fixture(scope="module")
def backbones(tiny_dir: Path) -> dict[str, LlavaBackbone]:
    return {fmt: LlavaBackbone("tiny", str(tiny_dir), device="cpu", prompt_format=fmt)
            for fmt in (IMAGE_FIRST, PROMPT_FIRST)}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)


def _reference(bb: LlavaBackbone, image: torch.Tensor, prompt: str) -> dict[str, torch.Tensor]:
    """Plain transformers forward of ONE sample (no padding): hidden_states at image positions, plus the
    last decoder layer's raw output (pre final norm) from a hook, keyed 'last_pre_norm'."""
    model = bb.model
    inputs = bb.processor(images=[image], text=[wrap_prompt(prompt, bb.prompt_format)], return_tensors="pt")
    assert inputs["attention_mask"].all()
    pos = image_positions(inputs["input_ids"], model.config.image_token_id)[0]
    raw: list[torch.Tensor] = []
    hook = model.model.language_model.layers[-1].register_forward_hook(lambda m, a, out: raw.append(out))
    try:
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    ref = {layer_key(i): h[0, pos] for i, h in enumerate(out.hidden_states)}
    ref["last_pre_norm"] = raw[0][0, pos]
    return ref


@pytest.mark.parametrize("fmt", [IMAGE_FIRST, PROMPT_FIRST], ids=["image_first", "prompt_first"])
@pytest.mark.parametrize("n", [1, 3])
def test_layers_match_plain_forward_of_each_sample_alone(backbones, fmt: str, n: int) -> None:
    bb = backbones[fmt]
    images, prompts = _images(n), PROMPTS[:n]
    depth = len(bb.decoder_blocks)
    keys = [layer_key(i) for i in range(depth + 1)]
    if n > 1:  # the batch really is padded (prompts of different lengths)
        assert not bb.inputs(images, prompts)["attention_mask"].all()
    tokens, cls = bb.extract(images, prompts, keys)
    assert cls == {}
    for b in range(n):
        ref = _reference(bb, images[b], prompts[b])
        for i in range(depth):
            assert tokens[layer_key(i)].shape == (n, bb.grid ** 2, 32)
            torch.testing.assert_close(tokens[layer_key(i)][b], ref[layer_key(i)], atol=ATOL, rtol=0)
        last = tokens[layer_key(depth)][b]
        torch.testing.assert_close(last, ref["last_pre_norm"], atol=ATOL, rtol=0)
        # hidden_states[-1] is after the final RMSNorm; our last layer is not.
        assert (last - ref[layer_key(depth)]).abs().max() > 1e-2


def test_image_positions_differ_per_row_under_prompt_first(backbones) -> None:
    bb = backbones[PROMPT_FIRST]
    batch = bb.inputs(_images(3), PROMPTS)
    pos = image_positions(batch["input_ids"], bb.image_token_id)
    assert pos.shape == (3, bb.grid ** 2)
    assert len({int(p[0]) for p in pos}) == 3  # image starts after prompts of different lengths
    with pytest.raises(ValueError, match="different numbers"):
        image_positions(torch.tensor([[5, 4, 4], [4, 5, 5]]), 4)


def _count_calls(modules: list[torch.nn.Module]) -> tuple[list[int], list]:
    calls = [0] * len(modules)

    def counter(i: int):
        def hook(m, a, out):
            calls[i] += 1
        return hook
    return calls, [m.register_forward_hook(counter(i)) for i, m in enumerate(modules)]


@pytest.mark.parametrize("keys,ran", [([layer_key(1)], 1), ([PROJECTOR], 0), ([vision_key(1)], 0)])
def test_early_stop_same_values_and_no_later_layers(backbones, keys: list[str], ran: int) -> None:
    bb = backbones[PROMPT_FIRST]
    images = _images(3, seed=1)
    full, _ = bb.extract(images, PROMPTS, list(bb.dims()))
    inner = bb.model.model
    watched = [*bb.decoder_blocks, inner.language_model.norm, bb.model.lm_head, bb.vision_blocks[-1]]
    calls, hooks = _count_calls(watched)
    try:
        part, _ = bb.extract(images, PROMPTS, keys)
    finally:
        for h in hooks:
            h.remove()
    assert set(part) == set(keys)
    for key in keys:
        assert torch.equal(part[key], full[key])
    depth = len(bb.decoder_blocks)
    assert calls[:depth] == [1] * ran + [0] * (depth - ran)  # decoder layers beyond the stop never ran
    assert calls[depth:depth + 2] == [0, 0]  # no final norm, no lm_head
    assert calls[-1] == (0 if keys == [vision_key(1)] else 1)  # the vision tower also stops early


def test_vision_and_projector_match_transformers(backbones) -> None:
    bb = backbones[IMAGE_FIRST]
    images = _images(2, seed=2)
    keys = [vision_key(i) for i in range(len(bb.vision_blocks) + 1)] + [PROJECTOR, layer_key(0)]
    tokens, _ = bb.extract(images, PROMPTS[:2], keys)
    inner = bb.model.model
    pixels = bb.inputs(images, PROMPTS[:2])["pixel_values"]
    with torch.no_grad():
        hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states
        projected = inner.multi_modal_projector(hidden[bb.config.vision_feature_layer][:, 1:])
    assert len(hidden) == len(bb.vision_blocks) + 1
    for k, h in enumerate(hidden):
        torch.testing.assert_close(tokens[vision_key(k)], h[:, 1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens[PROJECTOR], projected, atol=ATOL, rtol=0)
    # The projector output is exactly what is inserted at the image positions of layer_00.
    torch.testing.assert_close(tokens[layer_key(0)], tokens[PROJECTOR], atol=0, rtol=0)
    assert bb.dims()[vision_key(0)] == 32 and bb.dims()[PROJECTOR] == 32 and len(bb.dims()) == 4 + 1 + 4


def test_image_first_states_cannot_see_the_prompt(backbones) -> None:
    """Causal attention: with <image> before the prompt, image tokens only attend to `<s> USER:` and
    earlier image tokens, so every prompt gives the same image-token states. Prompt-first differs."""
    images = _images(1, seed=3)
    keys = [layer_key(i) for i in range(len(backbones[IMAGE_FIRST].decoder_blocks) + 1)]
    for fmt, same in ((IMAGE_FIRST, True), (PROMPT_FIRST, False)):
        a, _ = backbones[fmt].extract(images, [PROMPTS[0]], keys)
        b, _ = backbones[fmt].extract(images, [PROMPTS[2]], keys)
        for key in keys[1:]:
            diff = (a[key] - b[key]).abs().max().item()
            assert diff < 1e-6 if same else diff > 1e-3, (fmt, key, diff)
        torch.testing.assert_close(a[keys[0]], b[keys[0]], atol=0, rtol=0)  # embeddings never see context


def test_build_is_deterministic_and_reloads_offline(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_llava(tmp_path / "again", **TINY)
    other = build_tiny_llava(tmp_path / "other", **{**TINY, "seed": 1})
    w0, w1, w2 = (load_file(p / "model.safetensors") for p in (tiny_dir, again, other))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)
    code = ("import sys; from transformers import AutoProcessor, LlavaForConditionalGeneration as M; "
            "p = AutoProcessor.from_pretrained(sys.argv[1]); m = M.from_pretrained(sys.argv[1]); "
            "assert p.image_token_id == m.config.image_token_id; print('ok')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_prompt_count_and_image_size_are_checked(backbones) -> None:
    bb = backbones[IMAGE_FIRST]
    with pytest.raises(ValueError, match="prompts for"):
        bb.extract(_images(2), PROMPTS[:1], [layer_key(1)])
    with pytest.raises(ValueError, match="one prompt per image"):
        bb.extract(_images(1), None, [layer_key(1)])
    with pytest.raises(ValueError, match="images must be"):
        bb.extract(torch.zeros(1, 40, 40, 3, dtype=torch.uint8), PROMPTS[:1], [layer_key(1)])
    with pytest.raises(ValueError, match="no layers"):
        bb.extract(_images(1), PROMPTS[:1], [layer_key(9)])


def test_padding_outside_the_box_is_the_processors_mean(backbones) -> None:
    """Pad geometry: pixel values wholly outside each content box are 0 (the processor's
    image_mean, normalised), inside untouched; so tokens do not depend on the padding bytes."""
    from layerprobe.data.geometry import padding_mask

    bb = backbones[PROMPT_FIRST]
    images, boxes = _images(2, seed=3), torch.tensor([[8.0, 0.0, 16.0, 32.0], [0.0, 4.5, 32.0, 20.0]])
    outside = padding_mask(boxes, 32)
    noisy = images.clone()
    noisy[outside] = torch.randint(0, 256, (int(outside.sum()), 3), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(1))
    prompts = PROMPTS[:2]
    plain = bb.inputs(images, prompts)["pixel_values"]
    padded = bb.inputs(noisy, prompts, boxes)["pixel_values"]
    mask = outside[:, None].expand_as(padded)
    assert (padded[mask] == 0).all() and torch.equal(padded[~mask], plain[~mask])
    keys = [vision_key(1), layer_key(2)]
    clean, _ = bb.extract(images, prompts, keys, boxes=boxes)
    dirty, _ = bb.extract(noisy, prompts, keys, boxes=boxes)
    assert all(torch.equal(clean[k], dirty[k]) for k in keys)
