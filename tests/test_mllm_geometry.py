"""Kind mllm geometry, per family: the processor takes the data store's image as it is (no resize,
no crop), a label map painted into the image comes back on the token grid (each LLM token covers
exactly its own cell: merge blocks, pixel shuffle, pooling and Qwen2.5's windows included), and
under the pad geometry the padding's bytes never reach a feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layerprobe.data.geometry import padding_mask
from layerprobe.models.layers import PROJECTOR, layer_key, vision_key
from tests.mllm_helpers import FAMILIES, build_all, images, load, local_vision

MAGENTA = torch.tensor([255, 0, 255], dtype=torch.uint8)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny_mllm_geometry"))


def _normalised(bb, image: torch.Tensor) -> torch.Tensor:
    """(3, S, S): the image rescaled and normalised with the processor's own mean and std."""
    processor = bb.processor.image_processor
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    return ((image.double() / 255 - mean) / std).permute(2, 0, 1).float()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_processor_takes_the_image_as_it_is(paths, family: str) -> None:
    bb = load(paths[family], family)
    image = images(bb, 1, seed=1)
    pixels = bb.inputs(image, ["wall"])["pixel_values"]
    if family.startswith("qwen"):  # (patches, C * T * p * p) in 2x2 blocks: back to (C, S, S)
        g, p = bb.geometry, bb.geometry.patch
        side = g.patches_per_side // 2
        pixels = pixels.view(side, side, 2, 2, 3, 2, p, p)[:, :, :, :, :, 0]  # both frames are the image
        pixels = pixels.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, g.image_size, g.image_size)
    elif pixels.dim() == 5:
        pixels = pixels[0, 0]
    else:
        pixels = pixels[0]
    s = bb.image_size  # a tower input beyond it (LLaVA-OneVision's) holds pixels the tower never reads
    assert pixels.shape[-1] == bb.geometry.tower_input
    torch.testing.assert_close(pixels[:, :s, :s], _normalised(bb, image[0]), atol=1e-5, rtol=0)


def _paint(image: torch.Tensor, label: np.ndarray, cell: int) -> torch.Tensor:
    painted = image.clone()
    for row, col in zip(*np.nonzero(label)):
        painted[0, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = MAGENTA
    return painted


@pytest.mark.parametrize("family", FAMILIES)
def test_a_painted_label_map_comes_back_on_the_token_grid(paths, family: str) -> None:
    """With the vision attention made local, painting the cells of a random G x G label map changes
    exactly the tokens of those cells, in row-major order, in every key before the LLM mixes
    positions: the vision blocks (averaged over the token's patches), the connector, layer_00."""
    bb = local_vision(load(paths[family], family))
    grid, cell = bb.grid, bb.image_size // bb.grid
    label = np.random.default_rng(7).random((grid, grid)) < 0.4
    label[0, 0], label[-1, -1] = True, False  # both kinds of corner
    keys = [vision_key(0), vision_key(len(bb.vision_blocks)), PROJECTOR, layer_key(0)]
    image = images(bb, 1, seed=2)
    base, _ = bb.extract(image, ["wall"], keys)
    painted, _ = bb.extract(_paint(image, label, cell), ["wall"], keys)
    expected = np.flatnonzero(label.ravel()).tolist()
    for key in keys:
        changed = ((base[key][0] - painted[key][0]).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
        assert changed == expected, (key, changed, expected)


def _padded(bb, noise_seed: int, boxes: torch.Tensor) -> torch.Tensor:
    """Images whose pixels outside `boxes` are noise drawn from `noise_seed`; the content is fixed."""
    content = images(bb, len(boxes), seed=0)
    noise = images(bb, len(boxes), seed=noise_seed)
    outside = padding_mask(boxes, bb.image_size)[..., None]
    return torch.where(outside, noise, content)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_bytes_never_reach_a_feature(paths, family: str) -> None:
    """The pad geometry: what lies wholly outside a content box is set to the processor's mean
    after normalisation, on the family's own pixel layout (whole image, the image's own view, or
    Qwen's patch rows), so the data store's padding bytes are invisible."""
    bb = load(paths[family], family)
    s = bb.image_size
    boxes = torch.tensor([[0.0, s * 0.25, float(s), s * 0.5], [s * 0.3, 0.0, s * 0.4, float(s)]])
    keys = list(bb.dims())
    a, _ = bb.extract(_padded(bb, 1, boxes), ["wall", "wall"], keys, boxes=boxes)
    b, _ = bb.extract(_padded(bb, 2, boxes), ["wall", "wall"], keys, boxes=boxes)
    c, _ = bb.extract(_padded(bb, 2, boxes), ["wall", "wall"], keys)
    for key in keys:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    assert not torch.equal(b[layer_key(1)], c[layer_key(1)])  # without boxes the noise does reach them
