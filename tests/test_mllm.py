"""Kind mllm on a tiny random model of every family, saved with save_pretrained and loaded by path:
every key equals the library's own output_hidden_states at the image-token positions (each sample
processed alone), the DAG-build spec equals what the model produces, and the prompt reaches the
image tokens exactly where the family's attention allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerprobe.models.backbones.mllm import MllmBackbone
from layerprobe.models.layers import PROJECTOR, layer_key, vision_key
from layerprobe.models.specs import model_spec
from tests.mllm_helpers import (
    FAMILIES,
    PROMPT_FIRST,
    build_all,
    image_size_key,
    images,
    load,
    local_vision,
    reference_vision_grid,
    tower_states,
)

PROMPTS = ["Describe the image in detail", "wall"]  # different lengths: the batch is padded
ATOL = 1e-5


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny_mllm"))


@pytest.fixture(scope="module")
def backbones(paths: dict[str, Path]) -> dict[str, MllmBackbone]:
    return {family: load(path, family) for family, path in paths.items()}


def _alone(bb: MllmBackbone, image: torch.Tensor, prompt: str) -> tuple[dict, torch.Tensor, tuple, torch.Tensor]:
    """The plain library forward of one sample: (inputs, image positions, hidden_states, the last
    decoder layer's raw output from a hook)."""
    batch = bb.inputs(image[None], [prompt])
    assert batch["attention_mask"].all()
    positions = bb.positions(batch["input_ids"])[0]
    raw: list[torch.Tensor] = []
    hook = bb.decoder_blocks[-1].register_forward_hook(lambda m, a, out: raw.append(out))
    try:
        with torch.no_grad():
            states = bb.model(**batch, output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    return batch, positions, states, raw[0][0, positions]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_key_equals_the_library_forward_of_each_sample_alone(backbones, family: str) -> None:
    bb = backbones[family]
    batch_images = images(bb, 2)
    assert not bb.inputs(batch_images, PROMPTS)["attention_mask"].all()  # really padded
    tokens, cls = bb.extract(batch_images, PROMPTS, list(bb.dims()))
    assert cls == {}
    depth, vision_depth = len(bb.decoder_blocks), len(bb.vision_blocks)
    for b in range(2):
        batch, positions, states, last_raw = _alone(bb, batch_images[b], PROMPTS[b])
        assert len(states) == depth + 1
        for i in range(depth):  # decoder layers before the last: hidden_states[i]; 0 = embeddings + image
            torch.testing.assert_close(tokens[layer_key(i)][b], states[i][0, positions], atol=ATOL, rtol=0)
        torch.testing.assert_close(tokens[layer_key(depth)][b], last_raw, atol=ATOL, rtol=0)
        assert (last_raw - states[depth][0, positions]).abs().max() > 1e-3  # hidden_states[-1] is normed
        torch.testing.assert_close(tokens[PROJECTOR][b], states[0][0, positions], atol=0, rtol=0)
        tower = tower_states(bb, batch)
        assert len(tower) == vision_depth + 1
        for k in range(vision_depth + 1):
            torch.testing.assert_close(tokens[vision_key(k)][b], reference_vision_grid(bb, tower[k], batch),
                                       atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_dag_spec_is_what_the_model_produces(backbones, paths, family: str) -> None:
    bb = backbones[family]
    entry = {"kind": "mllm", "hub_id": str(paths[family])}
    if image_size_key(family):
        entry["image_size"] = image_size_key(family)
    spec = model_spec(family, entry)
    tokens, _ = bb.extract(images(bb, 1), ["wall"], [vision_key(1), layer_key(1)])
    assert spec.dims() == bb.dims()
    assert (spec.image_size, spec.grid, spec.depth, spec.vision_depth) == (
        bb.image_size, bb.grid, len(bb.decoder_blocks), len(bb.vision_blocks))
    assert tokens[layer_key(1)].shape == (1, spec.tokens, spec.dim)
    assert tokens[vision_key(1)].shape == (1, spec.tokens, spec.vision_dim)
    assert spec.patch_size == bb.geometry.patch * spec.reduction  # one LLM token's pixels
    assert spec.reduction == {"gemma3": 2, "qwen2_vl": 2, "qwen2_5_vl": 2, "internvl": 2, "idefics3": 2}.get(family, 1)
    found = bb.positions(bb.inputs(images(bb, 1), ["wall"])["input_ids"])
    assert found.shape == (1, spec.tokens)
    assert spec.params > 0 and spec.flops > 0


SEES_A_LATER_PROMPT = {"paligemma", "paligemma2"}  # prefix-LM; everything else causal for a later prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prompt_reaches_image_tokens_only_where_attention_allows(paths, backbones, family: str) -> None:
    """Same-length prompts, so every position is the same: after the image (the family's own
    template) only PaliGemma's image tokens change; before it (prompt_format) every family's do.
    The vision tower never sees the prompt."""
    first = load(paths[family], family, prompt_format=PROMPT_FIRST)
    image = images(backbones[family], 1, seed=3)
    for bb, changes in ((backbones[family], family in SEES_A_LATER_PROMPT), (first, True)):
        keys = list(bb.dims())
        a, _ = bb.extract(image, ["describe this"], keys)
        b, _ = bb.extract(image, ["explain  that"], keys)
        for key in keys:
            moved = not torch.equal(a[key], b[key])
            llm = key.startswith("layer_") and key != layer_key(0)
            assert moved == (llm and changes), (key, moved)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_vl", "paligemma"])
def test_a_late_image_cell_reaches_the_first_image_token_only_within_bidirectional_blocks(paths, family: str) -> None:
    """Gemma 3's image block and PaliGemma's prefix attend both ways; Qwen's image tokens are causal.
    The vision tower is made local first, so only the LLM can carry the last cell to the first token."""
    bb = local_vision(load(paths[family], family))
    image = images(bb, 1, seed=4)
    painted = image.clone()
    cell = bb.image_size // bb.grid
    painted[0, -cell:, -cell:] = torch.tensor([255, 0, 255], dtype=torch.uint8)
    a, _ = bb.extract(image, ["wall"], [layer_key(1)])
    b, _ = bb.extract(painted, ["wall"], [layer_key(1)])
    assert not torch.equal(a[layer_key(1)][0, -1], b[layer_key(1)][0, -1])
    assert (not torch.equal(a[layer_key(1)][0, 0], b[layer_key(1)][0, 0])) == (family != "qwen2_vl")


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_a_paligemma_suffix_never_reaches_the_image_tokens(backbones, impl: str) -> None:
    """token_type_ids mark the suffix (1) as causal: image tokens cannot see it under either
    backend. Without them SDPA drops the mask on an unpadded batch and the suffix leaks in, which
    is why every call passes what the processor returns."""
    bb = backbones["paligemma"]
    bb.model.set_attn_implementation({"text_config": impl})
    image = list(images(bb, 1, seed=5))

    def image_states(suffix: str, token_types: bool) -> torch.Tensor:
        batch = dict(bb.processor(images=image, text=["<image>describe"], suffix=[suffix], return_tensors="pt"))
        batch.pop("labels")
        assert batch["token_type_ids"].sum() > 0  # the suffix is marked
        if not token_types:
            batch.pop("token_type_ids")
        positions = bb.positions(batch["input_ids"])[0]
        with torch.no_grad():
            states = bb.model(**batch, output_hidden_states=True).hidden_states
        return torch.stack([s[0, positions] for s in states[1:]])

    try:
        assert torch.equal(image_states("a cat", True), image_states("a dog", True))
        if impl == "sdpa":
            assert not torch.equal(image_states("a cat", False), image_states("a dog", False))
    finally:
        bb.model.set_attn_implementation({"text_config": "sdpa"})


def _calls(modules: list[torch.nn.Module]) -> tuple[list[int], list]:
    calls = [0] * len(modules)

    def counter(i: int):
        def hook(m, a, out):
            calls[i] += 1
        return hook
    return calls, [m.register_forward_hook(counter(i)) for i, m in enumerate(modules)]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
@pytest.mark.parametrize("keys,llm_ran,last_vision_ran", [([layer_key(1)], 1, 1), ([PROJECTOR], 0, 1),
                                                            ([vision_key(1)], 0, 0)])
def test_early_stop_gives_the_same_values_and_runs_nothing_deeper(backbones, family: str, keys: list[str],
                                                                  llm_ran: int, last_vision_ran: int) -> None:
    bb = backbones[family]
    batch_images = images(bb, 2, seed=6)
    full, _ = bb.extract(batch_images, PROMPTS, list(bb.dims()))
    calls, hooks = _calls([*bb.decoder_blocks, bb.vision_blocks[-1]])
    try:
        part, _ = bb.extract(batch_images, PROMPTS, keys)
    finally:
        for h in hooks:
            h.remove()
    for key in keys:
        assert torch.equal(part[key], full[key])
    depth = len(bb.decoder_blocks)
    assert calls[:depth] == [1] * llm_ran + [0] * (depth - llm_ran)
    assert calls[-1] == last_vision_ran


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_families_say_that_their_tiles_are_dropped(paths, family: str, caplog) -> None:
    with caplog.at_level("INFO", logger="layerprobe.mllm"):
        bb = load(paths[family], family)
    assert f"the first {bb.grid ** 2} image tokens" in caplog.text
    assert "tiles after them are computed by the model but dropped" in caplog.text
