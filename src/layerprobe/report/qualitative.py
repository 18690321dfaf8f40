"""Qualitative panels: validation image, ground truth and probe predictions at the shallowest,
best and deepest probed layer, in one fixed class palette with a legend of the classes shown.

Also reads the validation labels once per resolution for the class frequencies the per-class
heatmap sorts by (classes absent from validation are left out there).
"""

from __future__ import annotations

import colorsys
import functools
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.ade20k import CLASS_NAMES, IGNORE, NUM_CLASSES
from .collect import Results, Store, model_data
from .style import plt, store_label

IGNORE_COLOUR = np.array([40, 40, 40], np.uint8)


# Colours a person expects for the most frequent ADE20K classes (sky blue, vegetation green, ...),
# chosen for this report; every other class gets a generated colour.
NATURAL_COLOURS = {
    "wall": (205, 180, 140), "building": (150, 95, 85), "sky": (110, 185, 245), "floor": (160, 100, 60),
    "tree": (35, 135, 45), "ceiling": (235, 225, 165), "road": (105, 105, 130), "grass": (125, 205, 75),
    "sidewalk": (185, 150, 165), "person": (225, 35, 95), "earth": (125, 85, 40), "mountain": (125, 110, 150),
    "plant": (60, 175, 120), "car": (245, 140, 20), "water": (30, 95, 205), "sea": (20, 55, 140),
    "field": (195, 205, 85), "sand": (230, 205, 130), "river": (50, 130, 210),
}


@functools.cache
def palette(n: int = NUM_CLASSES) -> np.ndarray:
    """Fixed colours per class id: natural colours for common classes (`NATURAL_COLOURS`), golden-
    ratio hues in three brightness bands for the rest. Same class, same colour in every panel and
    every report; all colours distinct."""
    bands = ((0.75, 0.95), (0.55, 0.8), (0.9, 0.6))  # (saturation, value): neighbours differ in brightness
    names = list(CLASS_NAMES[:n]) + [""] * max(0, n - len(CLASS_NAMES))
    colours, used = [], set(NATURAL_COLOURS.values())
    for i in range(n):
        if names[i] in NATURAL_COLOURS:
            colours.append(list(NATURAL_COLOURS[names[i]]))
            continue
        hue = (i * 0.618033988749895) % 1.0
        s, v = bands[i % 3]
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, s, v))
        while rgb in used:  # keep every class distinguishable by value
            rgb = (rgb[0], rgb[1], (rgb[2] + 7) % 256)
        used.add(rgb)
        colours.append(list(rgb))
    return np.array(colours, np.uint8)


def colourise(labels: np.ndarray) -> np.ndarray:
    """uint8 class map (H, W) -> RGB; ignore (255) dark grey."""
    out = np.empty((*labels.shape, 3), np.uint8)
    valid = labels < NUM_CLASSES
    out[valid] = palette()[labels[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


OVERLAY_ALPHA = 0.65  # class colour over the (greyscale) image


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Class colours blended over a greyscale copy of the image, so regions stay recognisable."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    base = np.repeat(grey[..., None], 3, axis=-1)
    return np.clip((1 - alpha) * base + alpha * colourise(labels), 0, 255).astype(np.uint8)


def open_validation(results: Results, data_name: str) -> Any | None:
    """A preprocessed data store (`64px`, `64px_pad`), or None when not available."""
    manifest = results.data.get(data_name)
    if not manifest:
        return None
    path = Path(manifest["store"])
    path = path if path.is_absolute() else results.workdir() / path
    if not path.exists():
        return None
    return zarr.open_group(path, mode="r")


def class_frequency(results: Results, data_name: str) -> np.ndarray | None:
    """Fraction of labelled validation pixels per class (chunk by chunk: 2,000 ADE images at 336 px
    are 226 MB of labels)."""
    group = open_validation(results, data_name)
    if group is None or "validation/labels" not in group:
        return None
    labels = group["validation/labels"]
    counts = np.zeros(NUM_CLASSES + 1, np.int64)
    step = max(1, labels.chunks[0])
    for start in range(0, labels.shape[0], step):
        block = np.asarray(labels[start:start + step]).ravel()
        counts += np.bincount(np.minimum(block, NUM_CLASSES), minlength=NUM_CLASSES + 1)[:NUM_CLASSES + 1]
    total = counts[:NUM_CLASSES].sum()
    return counts[:NUM_CLASSES] / total if total else None


def present_classes(results: Results, store: Store, frequency: np.ndarray | None) -> list[int]:
    """Classes in the validation ground truth, most frequent first; without the data store, the
    classes with a defined IoU at some layer (present in ground truth or predictions)."""
    if frequency is not None:
        ids = np.flatnonzero(frequency > 0)
        return [int(i) for i in ids[np.argsort(-frequency[ids], kind="stable")]]
    table = results.per_class.get(store)
    if table is None:
        return []
    means = table.mean(axis=0, skipna=True)
    return [int(i) for i in np.flatnonzero(means.notna().to_numpy())]


def chosen_layers(results: Results, store: Store) -> list[tuple[str, str]]:
    """(role, layer) for the shallowest, best (by mIoU) and deepest probed layer, merged when equal."""
    probes = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    probes = probes.sort_values("x")
    if probes.empty:
        return []
    shallow, deep = probes["layer"].iloc[0], probes["layer"].iloc[-1]
    valid = probes.dropna(subset=["miou"])
    best = valid.loc[valid["miou"].idxmax(), "layer"] if not valid.empty else deep
    roles: dict[str, list[str]] = {}
    for role, layer in (("shallowest", shallow), ("best", best), ("deepest", deep)):
        roles.setdefault(layer, []).append(role)
    order = probes["layer"].tolist()
    return [(" = ".join(r), layer) for layer, r in sorted(roles.items(), key=lambda kv: order.index(kv[0]))]


def qualitative_panel(results: Results, store: Store) -> Figure | None:
    group = open_validation(results, model_data(results.config, store[0]))
    layers = [(role, k) for role, k in chosen_layers(results, store) if (*store, k) in results.predictions]
    if group is None or not layers:
        return None
    ids, _ = results.predictions[(*store, layers[0][1])]
    ids = ids[:results.config["report"]["qualitative_images"]]  # probes save probe.saved_predictions
    if not ids:
        return None
    all_ids = list(group.attrs["validation_image_ids"])
    rows = [all_ids.index(i) for i in ids if i in all_ids]
    if not rows:
        return None
    images = np.stack([np.asarray(group["validation/images"][r]) for r in rows])
    labels = np.stack([np.asarray(group["validation/labels"][r]) for r in rows])
    return _draw(results, store, ids, images, labels, layers)


def _draw(results: Results, store: Store, ids: list[str], images: np.ndarray, labels: np.ndarray,
          layers: list[tuple[str, str]]) -> Figure:
    """Rows: images; columns: image, ground truth, one prediction per chosen layer. Laid out in
    inches (square panels, room for two-line column titles and the class legend below)."""
    ncols, nrows = 2 + len(layers), len(images)
    miou = results.probes.set_index(["model", "prompt", "layer"])["miou"]
    tick = results.model_axis(store[0]).tick_label
    titles = ["image", "ground truth"] + [
        f"{role}: {tick(store[0], layer)}\n({layer}, mIoU {miou.get((*store, layer), float('nan')):.3f})"
        for role, layer in layers]
    preds = {layer: results.predictions[(*store, layer)][1] for _, layer in layers}
    shown: set[int] = set()
    for row in range(nrows):
        shown |= set(np.unique(labels[row]).tolist())
        for _, layer in layers:
            shown |= set(np.unique(_fit(preds[layer][row], labels[row].shape)).tolist())
    classes = sorted(c for c in shown if c < NUM_CLASSES)
    entries = len(classes) + (IGNORE in shown)

    panel, gap, left, top = 1.9, 0.12, 0.3, 0.75
    width = left + ncols * panel + (ncols - 1) * gap + 0.15
    legend_cols = max(1, int(width / 1.75))
    legend_h = 0.45 + 0.2 * -(-entries // legend_cols)
    height = top + nrows * panel + (nrows - 1) * gap + legend_h
    fig = plt.figure(figsize=(width, height))
    for row in range(nrows):
        panels = [images[row], overlay(images[row], labels[row])]
        panels += [overlay(images[row], _fit(preds[layer][row], labels[row].shape)) for _, layer in layers]
        for col, picture in enumerate(panels):
            x0 = left + col * (panel + gap)
            y0 = height - top - (row + 1) * panel - row * gap
            ax = fig.add_axes((x0 / width, y0 / height, panel / width, panel / height))
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():  # a full frame (the report's style drops top/right spines)
                spine.set_visible(True)
                spine.set_linewidth(0.6)
            if row == 0:
                ax.set_title(titles[col], fontsize=8.5)
            if col == 0:
                ax.set_ylabel(ids[row], fontsize=7.5)
    fig.suptitle(store_label(store, results.config), fontsize=10, y=1 - 0.06 / height, va="top")
    _legend(fig, classes, results.class_names, IGNORE in shown, legend_cols, legend_h / height)
    return fig


def _fit(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize when a prediction was saved at another size than the image."""
    if pred.shape == shape:
        return pred
    rows = np.arange(shape[0]) * pred.shape[0] // shape[0]
    cols = np.arange(shape[1]) * pred.shape[1] // shape[1]
    return pred[rows][:, cols]


def _legend(fig: Figure, classes: list[int], names: list[str], ignore: bool, ncol: int, height: float) -> None:
    handles = [Patch(color=palette()[c] / 255, label=names[c]) for c in classes]
    if ignore:
        handles.append(Patch(color=IGNORE_COLOUR / 255, label="ignored (unlabelled)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, height), ncol=min(ncol, max(1, len(handles))),
               frameon=False, fontsize=8, title="classes shown", title_fontsize=8)
