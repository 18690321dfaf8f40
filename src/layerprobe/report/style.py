"""How the report looks, shared by every figure and table: one colour per (model, prompt), CLIP
dashed and LLaVA solid, what each category fill is called, the colours of a difference, and text
that fits its canvas (figure legends take the columns that fit; long titles and labels wrap).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.backend_bases import RendererBase  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from .. import config as lp_config  # noqa: E402
from ..models.layers import CLS_SUFFIX  # noqa: E402
from .axis import LayerAxis  # noqa: E402
from .collect import Results, Store  # noqa: E402

IDENTICAL = 1e-4  # |delta mIoU| below this is "identical" (fp16 features, same probe seed)
GREEN, RED, GREY, LIGHT_GREY = "#2e8b57", "#c0392b", "#9e9e9e", "#c8c8c8"
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                     "figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})


# What each `{category}` fill put into the prompt, as the report names it.
FILL_LABELS = {"dominant": "ground-truth class in the prompt", "shuffled": "control: another image's class",
               "random": "control: a random class", "none": "control: no class word"}


def store_label(store: Store, config: dict[str, Any] | None = None) -> str:
    """'model', 'model · prompt', and ' +CLS' for a CLS-variant series (prompt '<prompt>+cls');
    with the config, a `{category}` store says what its fill put in the prompt (the oracle:
    'ground-truth class in the prompt')."""
    model, prompt = store
    base, cls = (prompt[:-len(CLS_SUFFIX)], True) if prompt.endswith(CLS_SUFFIX) else (prompt, False)
    label = (model if base == "none" else f"{model} · {base}") + (" +CLS" if cls else "")
    fill = store_fill(config, model, base)
    return f"{label} ({FILL_LABELS[fill]})" if fill else label


def store_fill(config: dict[str, Any] | None, model: str, prompt: str) -> str | None:
    """The `{category}` fill of a store, None without config, prompt or placeholder."""
    if not config or model not in config["models"] or prompt == "none":
        return None
    try:
        return lp_config.store_fill(config["models"][model], prompt)
    except ValueError:
        return None


def colours(stores: list[Store]) -> dict[Store, Any]:
    cmap = plt.get_cmap("tab10" if len(stores) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(stores)}


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]


def line_style(results: Results, stores: list[Store], store: Store) -> dict[str, Any]:
    """Marker shape per line and a width that shrinks with drawing order, so a line identical to
    an earlier one (e.g. vision-tower layers under two prompts) leaves the earlier one visible."""
    i = stores.index(store)
    clip = is_clip(results, store)
    return {"linestyle": "--" if clip else "-", "marker": MARKERS[i % len(MARKERS)],
            "markersize": max(7 - 0.6 * i, 3.5), "linewidth": 1.4 if clip else max(3.6 - 0.5 * i, 1.4)}


def is_clip(results: Results, store: Store) -> bool:
    return results.axis.encoder_only(store[0])


def layer_xlabel(axis: LayerAxis) -> str:
    if axis.segmented:
        clip = "; image-only models at relative depth" if any(map(axis.encoder_only, axis.kinds)) else ""
        return f"layer  (v = vision-tower block · proj = {axis.connector} · then LLM layer{clip})"
    return "layer (0 = embeddings, i = output of block i)"


def decorate_layer_axis(ax: plt.Axes, axis: LayerAxis, rows: list[tuple[str, str]], x_max: float,
                        label: bool = True) -> None:
    """Ticks at probed layers, dotted segment borders, segment names along the top."""
    ticks, labels = axis.ticks(rows)
    ax.set_xticks(ticks, labels, fontsize=8, rotation=90 if len(ticks) > 16 else 0)
    for border in axis.boundaries():
        ax.axvline(border, color="0.6", linestyle=":", linewidth=1, zorder=0)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for name, start, end in axis.segment_spans(x_max):
        ax.text((start + end) / 2, 1.01, name, transform=top, ha="center", va="bottom", fontsize=8, color="0.35")
    if label:
        ax.set_xlabel(layer_xlabel(axis), fontsize=9)


LEGEND_MARGIN = 0.1  # inches kept free between a figure legend and the canvas's left/right edge


def fit_legend(fig: Figure, handles: list[Artist], max_ncol: int, **kwargs: Any) -> Legend:
    """A figure legend with the most columns (up to `max_ncol`) whose width fits the figure, so
    no entry is cut off at the canvas's edge; the widths are measured, not guessed."""
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width - 2 * LEGEND_MARGIN * fig.dpi
    for ncol in range(min(max_ncol, len(handles)), 1, -1):
        legend = fig.legend(handles=handles, ncol=ncol, **kwargs)
        if legend.get_window_extent(renderer).width <= room:
            return legend
        legend.remove()
    return fig.legend(handles=handles, ncol=1, **kwargs)


def wrap_text(text: Text, width: float, renderer: RendererBase) -> None:
    """Break a horizontal text at spaces into lines at most `width` pixels wide (a single word
    wider than that stays whole). A line preferably ends after ';', ',' or ')' or before '(' when
    it is at least 40% full, so "… (ground-truth class in the prompt)" stays one phrase."""
    if not text.get_text() or text.get_rotation() % 180 or text.get_window_extent(renderer).width <= width:
        return
    lines, rest = [], text.get_text()
    while rest:
        words = rest.split(" ")
        fits, preferred = 1, 0  # words on this line
        for n in range(1, len(words) + 1):
            text.set_text(" ".join(words[:n]))
            line_width = text.get_window_extent(renderer).width
            if line_width > width and n > 1:
                break
            fits = n
            phrase_end = n < len(words) and (words[n - 1].endswith((";", ",", ")")) or words[n].startswith("("))
            if phrase_end and line_width >= 0.4 * width:
                preferred = n
        if fits == len(words):
            lines.append(rest)
            break
        n = preferred or fits
        lines.append(" ".join(words[:n]).rstrip())
        rest = " ".join(words[n:]).lstrip()
    text.set_text("\n".join(lines))


def wrap_to_axes(fig: Figure) -> None:
    """Titles and x-axis labels no wider than their axes (as laid out), so a long store label
    is not cut at the canvas's edge and neighbouring panels' labels do not run into each other.
    The layout engine then makes room for the extra lines at the next draw."""
    fig.draw_without_rendering()  # the layout: where the axes are
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_visible():
            width = ax.get_window_extent(renderer).width
            for text in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label):
                wrap_text(text, width, renderer)


def delta_colour(delta: float, significant: bool = True) -> str:
    """Green/red only for a difference whose paired interval excludes 0; grey otherwise."""
    if abs(delta) < IDENTICAL:
        return GREY
    if not significant:
        return LIGHT_GREY
    return GREEN if delta > 0 else RED


def delta_text(delta: float) -> str:
    """+0.013, or +4e-04 for differences too small for three decimals (never a bare "-0.000")."""
    if abs(delta) < IDENTICAL:
        return "identical"
    return f"{delta:+.3f}" if abs(delta) >= 0.0005 else f"{delta:+.0e}"
