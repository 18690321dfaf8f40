"""The `pad` geometry: a non-square image onto the model's square input, and predictions back.

`center_crop` (data.resize_crop) loses the image's sides and is scored at the model's
resolution. `pad` follows LLaVA-1.5's own preprocessing (`expand2square`, then the image
processor's resize): the image is centred on a square of side max(H, W) filled with the mean
colour, and the square is resized to the model's resolution. The content box, (top, left,
height, width) in pixels at that resolution, is kept per image: a backbone fills what lies
outside it with its own mean colour (zero after normalisation, `padding_mask`), and a probe's
grid logits are mapped back to the original H x W through it (`predict_original`), to be
scored on the whole original annotation as mmseg scores whole images.

Coordinates: pixel i covers [i, i + 1); bilinear interpolation as F.interpolate with
align_corners=False (source = (i + 0.5) * in / out - 0.5, clamped at the borders).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from .ade20k import IGNORE

# LLaVA-1.5 pads with tuple(int(x * 255) for x in image_mean): the OpenAI CLIP mean, truncated.
# Cosmetic in the data store (backbones overwrite the padding with their own mean), but these
# are the bytes LLaVA itself would feed every model layerprobe ships.
PAD_FILL = (122, 116, 104)
Box = tuple[float, float, float, float]  # top, left, height, width at the model's resolution


def pad_offsets(height: int, width: int) -> tuple[int, int]:
    """Where expand2square puts the image on its max(H, W) square: (top, left)."""
    side = max(height, width)
    return (side - height) // 2, (side - width) // 2


def pad_box(height: int, width: int, resolution: int) -> Box:
    """The content of an H x W image on the padded square, at `resolution`."""
    scale = resolution / max(height, width)
    top, left = pad_offsets(height, width)
    return top * scale, left * scale, height * scale, width * scale


def pad_resize(image: Image.Image, label: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray, Box]:
    """Image (bicubic) and label (nearest, padding = IGNORE) padded to a square and resized."""
    width, height = image.size
    side = max(height, width)
    top, left = pad_offsets(height, width)
    square = Image.new("RGB", (side, side), PAD_FILL)
    square.paste(image, (left, top))
    square_label = np.full((side, side), IGNORE, np.uint8)
    square_label[top:top + height, left:left + width] = label
    size = (resolution, resolution)
    resized = Image.fromarray(square_label).resize(size, Image.NEAREST)
    return np.asarray(square.resize(size, Image.BICUBIC)), np.asarray(resized), pad_box(height, width, resolution)


def padding_mask(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """bool (B, size, size): pixels lying wholly outside each image's content box (B, 4).

    Pixels the box's edge cuts keep their (resized, partly padded) value, as in LLaVA."""
    boxes = boxes.double().cpu()
    index = torch.arange(size, dtype=torch.float64)
    eps = 1e-6  # box edges on pixel borders are exact up to float rounding

    def outside(start: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        return (index + 1 <= start[:, None] + eps) | (index >= (start + extent)[:, None] - eps)

    rows, cols = outside(boxes[:, 0], boxes[:, 2]), outside(boxes[:, 1], boxes[:, 3])
    return rows[:, :, None] | cols[:, None, :]


def fill_padding(pixels: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
    """Normalised images (B, 3, S, S): the padding set to 0, i.e. exactly the model's mean colour."""
    if boxes is None:
        return pixels
    mask = padding_mask(boxes, pixels.shape[-1]).to(pixels.device)
    return pixels.masked_fill(mask[:, None], 0.0)


def interpolation_matrix(out: int, grid: int, start: float, extent: float, resolution: int,
                         device: str | torch.device = "cpu") -> torch.Tensor:
    """(out, grid) bilinear weights: `out` pixels spread evenly over [start, start + extent) at
    `resolution`, read off a `grid` of cells covering [0, resolution) (align_corners=False)."""
    centres = start + (torch.arange(out, dtype=torch.float64) + 0.5) * (extent / out)
    source = (centres * (grid / resolution) - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=grid - 1)
    upper = (lower + 1).clamp(max=grid - 1)
    frac = source - lower
    weights = torch.zeros(out, grid, dtype=torch.float64)
    rows = torch.arange(out)
    weights.index_put_((rows, lower), 1 - frac, accumulate=True)
    weights.index_put_((rows, upper), frac, accumulate=True)
    return weights.to(device=device, dtype=torch.float32)


def predict_original(logits: torch.Tensor, box: Box, shape: tuple[int, int], resolution: int,
                     max_elements: int = 1 << 24) -> Iterator[tuple[int, torch.Tensor]]:
    """Argmax at the original H x W of grid logits (C, g, g) of a padded image, in row blocks.

    Yields (first row, predicted classes (rows, W) int64). Equal to upsampling the logits to
    the original-scale square max(H, W)^2 and cutting the padding away, without ever holding
    (C, H, W): rows are interpolated once (C x H x g), then at most `max_elements` logits of
    full rows at a time.
    """
    (height, width), (top, left, box_h, box_w) = shape, box
    classes, grid = logits.shape[0], logits.shape[-1]
    along_rows = interpolation_matrix(height, grid, top, box_h, resolution, logits.device)
    along_cols = interpolation_matrix(width, grid, left, box_w, resolution, logits.device)
    rows = torch.einsum("hi,cij->hcj", along_rows, logits.float())  # (H, C, g)
    step = max(1, max_elements // (classes * width))
    for start in range(0, height, step):
        yield start, (rows[start:start + step] @ along_cols.T).argmax(1)  # (rows, C, W) -> (rows, W)
