"""The report's quantitative figures (matplotlib, Agg); each function returns a Figure.

Conventions shared by all figures: one colour per (model, prompt) everywhere, CLIP dashed and
LLaVA solid, the layer axis of `axis.LayerAxis` with its segment borders, legends outside the
data area (below or above the axes) so they never cover a curve.

The page embeds each PNG at its natural size, so nothing may reach past the canvas: figure
legends take as many columns as fit the figure's width (`fit_legend`), and long titles and axis
labels are broken into lines no wider than their axes once the layout is known (`wrap_to_axes`).
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.backend_bases import RendererBase  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from .. import config as lp_config  # noqa: E402
from ..models.layers import CLS_SUFFIX  # noqa: E402
from .axis import LayerAxis  # noqa: E402
from ..probing.intervals import Interval  # noqa: E402
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
    clip = _is_clip(results, store)
    return {"linestyle": "--" if clip else "-", "marker": MARKERS[i % len(MARKERS)],
            "markersize": max(7 - 0.6 * i, 3.5), "linewidth": 1.4 if clip else max(3.6 - 0.5 * i, 1.4)}


def _is_clip(results: Results, store: Store) -> bool:
    return results.axis.encoder_only(store[0])


def layer_xlabel(axis: LayerAxis) -> str:
    if axis.segmented:
        clip = "; image-only models at relative depth" if any(map(axis.encoder_only, axis.kinds)) else ""
        return f"layer  (v = vision-tower block · proj = projector · then LLM layer{clip})"
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


# --------------------------------------------------------------------------------------------
# Fitting text into the canvas
# --------------------------------------------------------------------------------------------

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


def _best_row(frame: pd.DataFrame, column: str = "miou") -> pd.Series | None:
    valid = frame.dropna(subset=[column])
    return None if valid.empty else valid.loc[valid[column].idxmax()]


# --------------------------------------------------------------------------------------------
# Headline: mIoU and pixel accuracy vs layer
# --------------------------------------------------------------------------------------------

def headline(results: Results) -> Figure:
    stores = results.store_list()
    colour = colours(stores)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    x_max = float(results.probes["x"].max())
    rows = list(zip(results.probes["model"], results.probes["layer"]))
    for ax, column, title in ((axes[0], "miou", "Validation mIoU per layer"),
                              (axes[1], "acc", "Validation pixel accuracy per layer")):
        for store in stores:
            _headline_line(ax, results, store, column, colour[store], x_max, line_style(results, stores, store))
        decorate_layer_axis(ax, results.axis, rows, x_max)
        ax.set_ylabel("mIoU" if column == "miou" else "pixel accuracy")
        ax.set_title(title, pad=16 if results.axis.segmented else 6)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    # The best values go into the legend, not next to the stars: stars of several lines often sit
    # close together (CLIP towers peak at similar depths) and their number labels would collide.
    handles = [Line2D([], [], color=colour[s], label=_best_label(results, s), **line_style(results, stores, s))
               for s in stores]
    handles.append(Line2D([], [], color="0.3", marker="*", markersize=11, linestyle="none",
                          label="best layer (by mIoU)"))
    if results.axis.segmented and any(_is_clip(results, s) for s in stores):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="CLIP best, carried across (reference)"))
    fit_legend(fig, handles, len(handles), loc="outside lower center", frameon=False)
    wrap_to_axes(fig)  # the layer label is as wide as a panel: two lines, not into the other panel
    return fig


def _store_probes(results: Results, store: Store) -> pd.DataFrame:
    return results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]


def _best_label(results: Results, store: Store) -> str:
    best = _best_row(_store_probes(results, store))
    if best is None:
        return store_label(store, results.config)
    return f"{store_label(store, results.config)}  (★ {best['layer']}: mIoU {best['miou']:.3f}, acc {best['acc']:.3f})"


def _headline_line(ax: plt.Axes, results: Results, store: Store, column: str, colour: Any, x_max: float,
                   style: dict[str, Any]) -> None:
    frame = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    frame = frame.sort_values("x")
    clip = _is_clip(results, store)
    # LLaVA's segments are drawn as separate runs so no line bridges vision tower -> projector -> LLM.
    for _, part in frame.groupby((frame["segment"] != frame["segment"].shift()).cumsum()):
        ax.plot(part["x"], part[column], color=colour, markeredgecolor="white", markeredgewidth=0.5, **style)
        if column == "miou" and part["miou_low"].notna().any():  # the 95% bootstrap interval per layer
            ax.fill_between(part["x"], part["miou_low"], part["miou_high"], color=colour, alpha=0.15, linewidth=0)
        if column == "miou" and (part["seeds"] > 1).any():  # mean ± sd over probe seeds
            ax.errorbar(part["x"], part["seed_mean"], yerr=part["seed_sd"], fmt="none", ecolor=colour,
                        elinewidth=1, capsize=2.5, alpha=0.8)
    if len(frame["segment"].unique()) > 1:
        ax.plot(frame["x"], frame[column], color=colour, linewidth=0.8, alpha=0.35)
    best = _best_row(frame)  # the best layer is chosen by mIoU on both panels
    if best is not None:
        ax.plot(best["x"], best[column], marker="*", markersize=15, color=colour, markeredgecolor="black",
                markeredgewidth=0.6, zorder=5, linestyle="none")
        if clip and results.axis.segmented:
            ax.hlines(best[column], results.axis.boundaries()[0], x_max + 0.3, colors=[colour], linestyles=":",
                      linewidth=1.2, alpha=0.8)


# --------------------------------------------------------------------------------------------
# Prompt comparison
# --------------------------------------------------------------------------------------------

def prompt_deltas(results: Results) -> pd.DataFrame:
    """Per model with several prompts: mIoU of each other prompt minus the general prompt, per
    layer. The general prompt is the first one without a {category} placeholder (else the first)."""
    rows = []
    for model, cfg in results.config["models"].items():
        prompts = lp_config.prompt_ids(cfg) if cfg.get("prompts") else []
        if len(prompts) < 2:
            continue
        base = general_prompt(cfg)
        for prompt in [p for p in prompts if p != base]:
            rows += _delta_rows(results, model, base, prompt)
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def _delta_rows(results: Results, model: str, base: str, prompt: str) -> list[dict[str, Any]]:
    """mIoU(prompt) − mIoU(base) per layer both probed, forward order, with the paired interval."""
    frame = results.probes[(results.probes["model"] == model) & results.probes["prompt"].isin([base, prompt])]
    wide = frame.pivot(index="layer", columns="prompt", values="miou")
    if base not in wide or prompt not in wide:
        return []
    rows = []
    for layer in frame.drop_duplicates("layer").sort_values("x")["layer"]:
        delta = wide.at[layer, prompt] - wide.at[layer, base]
        if math.isnan(delta):
            continue
        interval = results.paired((model, base, layer), (model, prompt, layer))
        rows.append({"model": model, "prompt": prompt, "base": base, "layer": layer, "delta": delta,
                     **interval_columns(interval), "seed_deltas": _seed_deltas(results, model, base, prompt, layer),
                     "segment": results.axis.segment(model, layer), "tick": results.axis.tick_label(model, layer)})
    return rows


DELTA_COLUMNS = ["model", "prompt", "base", "layer", "delta", "low", "high", "significant", "seed_deltas", "segment",
                 "tick"]


def _seed_deltas(results: Results, model: str, base: str, prompt: str, layer: str) -> list[float]:
    """prompt − base per probe seed (same seed on both sides), for every seed both have."""
    runs = results.seed_runs
    if runs.empty:
        return []
    here = runs[(runs["model"] == model) & (runs["layer"] == layer)]
    wide = here.pivot_table(index="seed", columns="prompt", values="miou")
    if base not in wide or prompt not in wide:
        return []
    return [float(v) for v in (wide[prompt] - wide[base]).dropna()]


def interval_columns(interval: Interval | None) -> dict[str, Any]:
    """low/high of a paired difference and whether it excludes 0 (no counts: NaN, not significant)."""
    if interval is None:
        return {"low": float("nan"), "high": float("nan"), "significant": False}
    return {"low": interval.low, "high": interval.high, "significant": interval.significant}


def oracle_deltas(results: Results) -> pd.DataFrame:
    """Per `{category}` prompt listed with both its oracle (`dominant`) and its `shuffled` control:
    oracle minus control per layer, paired over the same images: what the correct class adds."""
    rows = []
    for model, cfg in results.config["models"].items():
        stores = lp_config.prompt_ids(cfg) if cfg.get("prompts") else []
        for prompt in stores:
            control = lp_config.store_id(prompt, "shuffled")
            if lp_config.store_fill(cfg, prompt) == "dominant" and control in stores:
                rows += _delta_rows(results, model, control, prompt)
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def general_prompt(cfg: dict[str, Any]) -> str:
    prompts = cfg.get("prompts", [])
    general = [p["id"] for p in prompts if "{category}" not in p["text"]]
    return (general or [p["id"] for p in prompts])[0]


def delta_colour(delta: float, significant: bool = True) -> str:
    """Green/red only for a difference whose paired interval excludes 0; grey otherwise."""
    if abs(delta) < IDENTICAL:
        return GREY
    if not significant:
        return LIGHT_GREY
    return GREEN if delta > 0 else RED


def prompt_comparison(results: Results, deltas: pd.DataFrame, model: str, better: str = "prompt better",
                      worse: str = "prompt worse") -> Figure:
    """Bars per layer: a prompt minus its base (the general prompt, or the oracle's control);
    green better, red worse (intervals excluding 0), light grey not significant, grey identical."""
    frame = deltas[deltas["model"] == model]
    prompts = list(dict.fromkeys(frame["prompt"]))
    n_layers = frame["layer"].nunique()
    fig, axes = plt.subplots(len(prompts), 1, figsize=(max(7.0, 0.55 * n_layers + 3), 2.9 * len(prompts) + 0.8),
                             layout="constrained", squeeze=False)
    span = max(float(pd.concat([frame["delta"], frame["low"], frame["high"]]).abs().max()), 2 * IDENTICAL)
    for ax, prompt in zip(axes[:, 0], prompts):
        part = frame[frame["prompt"] == prompt].reset_index(drop=True)
        _delta_bars(ax, part, span)
        ax.set_title(f"{store_label((model, prompt), results.config)} minus “{part['base'].iloc[0]}”", fontsize=10)
        ax.set_ylabel("Δ mIoU")
    pre_llm = (frame["segment"] != "llm").any()
    axes[-1, 0].set_xlabel("layer  (v = vision-tower block · proj = projector · then LLM layer)" if pre_llm
                           else "LLM layer")
    handles = [Patch(color=GREEN, label=f"{better} (95% interval > 0)"),
               Patch(color=RED, label=f"{worse} (95% interval < 0)"),
               Patch(color=LIGHT_GREY, label="not significant (interval contains 0)"),
               Patch(color=GREY, label=f"identical (|Δ| < {IDENTICAL:g})"),
               Line2D([], [], color="0.15", marker="_", markersize=8, label="paired bootstrap 95% interval")]
    if frame["seed_deltas"].map(len).max() > 1:
        handles.append(Line2D([], [], color="#5b3a8c", marker="o", markersize=4, linestyle="none",
                              label="Δ per probe seed (training noise)"))
    fit_legend(fig, handles, 3, loc="outside lower center", frameon=False)
    wrap_to_axes(fig)  # "<store label> minus “<base>”" is often wider than the chart
    return fig


def delta_text(delta: float) -> str:
    """+0.013, or +4e-04 for differences too small for three decimals (never a bare "-0.000")."""
    if abs(delta) < IDENTICAL:
        return "identical"
    return f"{delta:+.3f}" if abs(delta) >= 0.0005 else f"{delta:+.0e}"


def _delta_bars(ax: plt.Axes, part: pd.DataFrame, span: float) -> None:
    xs = np.arange(len(part))
    # Tiny but real differences get a bar of at least 3% of the axis, so their sign shows at a glance.
    floor = 0.03 * span * 1.6
    heights = [0.0 if abs(d) < IDENTICAL else math.copysign(max(abs(d), floor), d) for d in part["delta"]]
    ax.bar(xs, heights, color=[delta_colour(d, sig) for d, sig in zip(part["delta"], part["significant"])],
           width=0.7)
    shown = part["low"].notna() & (part["delta"].abs() >= IDENTICAL)
    # The interval as drawn from its bounds: a percentile interval need not contain the estimate
    # (a skewed resampling distribution), so it is not an error bar around the bar's height.
    ax.vlines(xs[shown], part["low"][shown], part["high"][shown], color="0.15", linewidth=1)
    for bound in ("low", "high"):
        ax.hlines(part[bound][shown], xs[shown] - 0.1, xs[shown] + 0.1, color="0.15", linewidth=1)
    for x, seeds in zip(xs, part["seed_deltas"]):
        if len(seeds) > 1:  # the probe's own training noise, beside the interval over images
            ax.plot([x + 0.28] * len(seeds), seeds, linestyle="none", marker="o", markersize=3, color="#5b3a8c")
    ax.axhline(0, color="0.2", linewidth=0.8)
    same = [x for x, d in zip(xs, part["delta"]) if abs(d) < IDENTICAL]
    ax.plot(same, [0.0] * len(same), linestyle="none", marker="s", markersize=7, color=GREY, zorder=3)
    for x, delta, height in zip(xs, part["delta"], heights):
        identical = abs(delta) < IDENTICAL
        offset = 6 if identical else (3 if delta >= 0 else -3)
        ax.annotate(delta_text(delta), (x, height), textcoords="offset points", xytext=(0, offset),
                    ha="center", va="bottom" if delta >= 0 else "top", fontsize=7.5,
                    rotation=90 if identical else 0, color="0.35" if identical else "0.1")
    ax.set_ylim(-span * 1.6, span * 1.6)
    ax.set_xticks(xs, part["tick"], fontsize=8)
    ax.set_xlim(-0.6, len(part) - 0.4)
    changes = [i for i in range(1, len(part)) if part.at[i, "segment"] != part.at[i - 1, "segment"]]
    for i in changes:
        ax.axvline(i - 0.5, color="0.6", linestyle=":", linewidth=1)
    ax.grid(axis="y", alpha=0.3)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

def training_curves(results: Results, store: Store, ncols: int = 5) -> Figure:
    frame = results.curves[(results.curves["model"] == store[0]) & (results.curves["prompt"] == store[1])]
    probes = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    layers = probes.sort_values("x")["layer"].tolist()
    axis = results.model_axis(store[0])
    ncols = min(ncols, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    width = 2.7 * ncols + 0.8
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.3 * nrows + 0.9), squeeze=False, sharey=True)
    handles = [Line2D([], [], color="C0", label="test mIoU"), Line2D([], [], color="C0", linestyle="--", label="running train mIoU"),
               Line2D([], [], color="0.55", linewidth=1, label="loss (right axis)"),
               Line2D([], [], color="C3", marker="*", linestyle=":", markersize=9, label="best epoch (test mIoU)")]
    legend = fit_legend(fig, handles, 4, loc="upper center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    # Fixed margins in inches (constrained layout is slow with a twin axis per panel); the top one
    # holds the legend (more rows when a narrow figure cannot take its four entries side by side).
    top_margin = max(0.7, legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi + 0.42)
    height = 2.3 * nrows + 0.2 + top_margin
    fig.set_figheight(height)
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.45 / width, bottom=0.5 / height, top=1 - top_margin / height,
                        wspace=0.42, hspace=0.6)
    top = max(0.05, float(frame[["running_train_miou", "test_miou"]].max().max()) * 1.12) if not frame.empty else 1.0
    loss_top = float(frame["loss"].max()) * 1.08 if not frame.empty else 1.0
    for i, layer in enumerate(layers):
        ax = axes[i // ncols, i % ncols]
        _curve_panel(ax, frame[frame["layer"] == layer], probes[probes["layer"] == layer], top, loss_top,
                     show_loss_label=(i % ncols == ncols - 1) or i == len(layers) - 1)
        best = probes[probes["layer"] == layer]["best_epoch"]
        best_text = f" · best ep {int(best.iloc[0])}" if not best.empty and not pd.isna(best.iloc[0]) else ""
        ax.set_title(f"{axis.tick_label(store[0], layer)} ({layer}){best_text}", fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel("mIoU")
        if i // ncols == nrows - 1 or i + ncols >= len(layers):
            ax.set_xlabel("epoch")
    for j in range(len(layers), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    return fig


def _curve_panel(ax: plt.Axes, curve: pd.DataFrame, probe: pd.DataFrame, top: float, loss_top: float,
                 show_loss_label: bool) -> None:
    loss_ax = ax.twinx()
    loss_ax.plot(curve["epoch"], curve["loss"], color="0.55", linewidth=1)
    loss_ax.set_ylim(0, loss_top)
    loss_ax.tick_params(labelsize=7, colors="0.45")
    loss_ax.spines["right"].set_visible(True)
    loss_ax.spines["top"].set_visible(False)
    if show_loss_label:
        loss_ax.set_ylabel("loss", color="0.45", fontsize=8)
    ax.set_zorder(loss_ax.get_zorder() + 1)  # mIoU lines above the loss line
    ax.patch.set_visible(False)
    ax.plot(curve["epoch"], curve["test_miou"], color="C0", linewidth=1.8)
    ax.plot(curve["epoch"], curve["running_train_miou"], color="C0", linestyle="--", linewidth=1.2)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.25)
    if not probe.empty and not curve.empty and not pd.isna(probe["best_epoch"].iloc[0]):
        best = int(probe["best_epoch"].iloc[0])
        at = curve[curve["epoch"] == best]["test_miou"]
        ax.axvline(best, color="C3", linestyle=":", linewidth=1)
        if not at.empty:
            ax.plot(best, at.iloc[0], marker="*", color="C3", markersize=10, zorder=5)
    ax.xaxis.get_major_locator().set_params(integer=True)


# --------------------------------------------------------------------------------------------
# Per-class IoU
# --------------------------------------------------------------------------------------------

def per_class_heatmap(results: Results, store: Store, classes: list[int], frequency: np.ndarray | None) -> Figure:
    """Classes (rows, most frequent first) x layers (columns, forward order), IoU in colour.

    Laid out in inches (no constrained layout: 150 class labels make it slow): class names on the
    left, layer ticks on top; a tall map (scrolled in the page) gets its colour scale on top and
    layer ticks at the bottom too."""
    table = results.per_class[store]
    probes = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    layers = [k for k in probes.sort_values("x")["layer"] if k in table.index]
    values = table.loc[layers].iloc[:, classes].to_numpy(dtype=float).T  # (classes, layers)
    names = [_class_label(results.class_names[c], frequency, c) for c in classes]
    tall = len(classes) > 30
    label_w = 0.068 * max(len(n) for n in names) + 0.3
    map_w, map_h = max(2.4, 0.62 * len(layers)), 0.24 * len(classes)
    top, bottom, right = (1.35 if tall else 0.85), (0.45 if tall else 0.2), (0.3 if tall else 1.05)
    width = label_w + map_w + right
    fig = plt.figure(figsize=(width, top + map_h + bottom))
    # The store label, centred over the map; broken into lines (with room made on top for them)
    # when wider than the figure, as with one or two layers and a long prompt id.
    title = fig.text(0, 0, store_label(store, results.config), ha="center", va="top", fontsize=10)
    renderer = fig.canvas.get_renderer()
    one_line = title.get_window_extent(renderer).height
    wrap_text(title, (width - 0.2) * fig.dpi, renderer)
    extra = (title.get_window_extent(renderer).height - one_line) / fig.dpi
    top += extra
    height = top + map_h + bottom
    fig.set_figheight(height)
    half = title.get_window_extent(renderer).width / fig.dpi / 2
    title.set_position((min(max(label_w + map_w / 2, half + 0.1), width - half - 0.1) / width, 1 - 0.08 / height))
    ax = fig.add_axes((label_w / width, bottom / height, map_w / width, map_h / height))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    axis = results.model_axis(store[0])
    ax.set_xticks(range(len(layers)), [axis.tick_label(store[0], k) for k in layers], fontsize=8)
    ax.set_yticks(range(len(classes)), names, fontsize=8)
    ax.set_xlabel("layer", fontsize=9)
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    for spine in ax.spines.values():
        spine.set_visible(True)
    if values.size <= 400:  # numbers only when the cells are big enough to hold them
        _annotate_cells(ax, values)
    if tall:  # a tall map is scrolled: colour scale on top, layer labels top and bottom
        bar_w = min(map_w, 3.0)
        cax = fig.add_axes(((label_w + (map_w - bar_w) / 2) / width, (height - 0.55 - extra) / height, bar_w / width,
                            0.12 / height))
        fig.colorbar(image, cax=cax, orientation="horizontal")
        cax.set_ylabel("IoU", rotation=0, ha="right", va="center", fontsize=9)
        cax.tick_params(labelsize=8)
        ax.tick_params(labelbottom=True, bottom=True)
    else:
        cax = fig.add_axes(((label_w + map_w + 0.15) / width, bottom / height, 0.15 / width, map_h / height))
        fig.colorbar(image, cax=cax, label="IoU")
    return fig


def _class_label(name: str, frequency: np.ndarray | None, index: int) -> str:
    if frequency is None:
        return name
    share = 100 * frequency[index]
    return f"{name} ({share:.1f}%)" if share >= 0.1 else f"{name} ({share:.2g}%)"


def _annotate_cells(ax: plt.Axes, values: np.ndarray) -> None:
    for (row, col), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")


def best_worst_classes(results: Results, store: Store, classes: list[int], n: int = 5) -> dict[str, Any]:
    """At the store's best layer: the n best and n worst classes among those present."""
    probes = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    best = _best_row(probes)
    if best is None or store not in results.per_class:
        return {"layer": None, "best": [], "worst": []}
    row = results.per_class[store].loc[best["layer"]].iloc[classes].dropna().sort_values(ascending=False)
    pairs = [(str(name), float(v)) for name, v in row.items()]
    n = min(n, max(1, len(pairs) // 2))  # no class in both lists
    return {"layer": best["layer"], "best": pairs[:n], "worst": pairs[::-1][:n]}


# --------------------------------------------------------------------------------------------
# Layer scan vs probes
# --------------------------------------------------------------------------------------------

def _segment_runs(ax: plt.Axes, frame: pd.DataFrame, **style: Any) -> None:
    """One line per run of consecutive layers in the same segment (frame sorted by x), so no line
    claims a trend from the vision tower through the projector into the LLM."""
    for _, part in frame.groupby((frame["segment"] != frame["segment"].shift()).cumsum()):
        ax.plot(part["x"], part["miou"], **style)


def scan_figure(results: Results, stores: list[Store], ncols: int = 2) -> Figure:
    colour = colours(results.store_list())
    ncols = min(ncols, len(stores))
    nrows = math.ceil(len(stores) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.6 * ncols, 3.8 * nrows + 0.6), layout="constrained",
                             squeeze=False)
    fig.get_layout_engine().set(h_pad=0.12)  # titles clear of the x labels of the row above
    for i, store in enumerate(stores):
        ax = axes[i // ncols, i % ncols]
        scan = results.scan[(results.scan["model"] == store[0]) & (results.scan["prompt"] == store[1])].sort_values("x")
        probe = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
        probe = probe.sort_values("x")
        axis = results.model_axis(store[0], scan["layer"].tolist() + probe["layer"].tolist())
        scan = scan.assign(x=[axis.position(store[0], k) for k in scan["layer"]]).sort_values("x")
        probe = probe.assign(x=[axis.position(store[0], k) for k in probe["layer"]]).sort_values("x")
        c = colour.get(store, "C0")
        scan = scan.assign(segment=[axis.segment(store[0], k) for k in scan["layer"]])
        probe = probe.assign(segment=[axis.segment(store[0], k) for k in probe["layer"]])
        _segment_runs(ax, scan, color=c, alpha=0.55, linewidth=1.3, marker=".", markersize=5)
        _segment_runs(ax, probe, color=c, linewidth=2, marker="o", markersize=4)
        for frame, marker in ((scan, "P"), (probe, "*")):
            best = _best_row(frame)
            if best is not None:
                ax.plot(best["x"], best["miou"], marker=marker, markersize=12 if marker == "*" else 9, color=c,
                        markeredgecolor="black", markeredgewidth=0.6, linestyle="none", zorder=5)
        x_max = float(max(scan["x"].max() if not scan.empty else 0, probe["x"].max() if not probe.empty else 0))
        rows = list(zip(scan["model"], scan["layer"])) + list(zip(probe["model"], probe["layer"]))
        decorate_layer_axis(ax, axis, rows, x_max)
        ax.set_title(store_label(store, results.config), pad=16 if axis.segmented else 6)
        ax.set_ylabel("validation mIoU")
        ax.grid(axis="y", alpha=0.3)
    for j in range(len(stores), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    handles = [Line2D([], [], color="0.4", alpha=0.6, marker=".", label="layer scan (ridge, every layer)"),
               Line2D([], [], color="0.4", linewidth=2, marker="o", markersize=4, label="linear probe (trained)"),
               Line2D([], [], color="0.4", marker="P", linestyle="none", markersize=8, label="scan's best layer"),
               Line2D([], [], color="0.4", marker="*", linestyle="none", markersize=11, label="probe's best layer")]
    fit_legend(fig, handles, 4, loc="outside lower center", frameon=False)
    wrap_to_axes(fig)
    return fig
