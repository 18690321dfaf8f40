"""The report's quantitative figures (matplotlib, Agg); each function returns a Figure.

Conventions shared by all figures: one colour per (model, prompt) everywhere, CLIP dashed and
LLaVA solid, the layer axis of `axis.LayerAxis` with its segment borders, legends outside the
data area (below or above the axes) so they never cover a curve.

The page embeds each PNG at its natural size, so nothing may reach past the canvas: figure
legends take as many columns as fit the figure's width (`style.fit_legend`), and long titles and
axis labels are broken into lines no wider than their axes once the layout is known
(`style.wrap_to_axes`). The numbers drawn come from `deltas`.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .collect import Results, Store  # noqa: E402
from .deltas import best_row  # noqa: E402
from .style import (  # noqa: E402
    GREEN,
    GREY,
    IDENTICAL,
    LIGHT_GREY,
    RED,
    colours,
    decorate_layer_axis,
    delta_colour,
    delta_text,
    fit_legend,
    is_clip,
    line_style,
    store_label,
    wrap_text,
    wrap_to_axes,
)

# --------------------------------------------------------------------------------------------
# Fitting text into the canvas
# --------------------------------------------------------------------------------------------

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
    if results.axis.segmented and any(is_clip(results, s) for s in stores):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="CLIP best, carried across (reference)"))
    fit_legend(fig, handles, len(handles), loc="outside lower center", frameon=False)
    wrap_to_axes(fig)  # the layer label is as wide as a panel: two lines, not into the other panel
    return fig


def _store_probes(results: Results, store: Store) -> pd.DataFrame:
    return results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]


def _best_label(results: Results, store: Store) -> str:
    best = best_row(_store_probes(results, store))
    if best is None:
        return store_label(store, results.config)
    return f"{store_label(store, results.config)}  (★ {best['layer']}: mIoU {best['miou']:.3f}, acc {best['acc']:.3f})"


def _headline_line(ax: plt.Axes, results: Results, store: Store, column: str, colour: Any, x_max: float,
                   style: dict[str, Any]) -> None:
    frame = results.probes[(results.probes["model"] == store[0]) & (results.probes["prompt"] == store[1])]
    frame = frame.sort_values("x")
    clip = is_clip(results, store)
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
    best = best_row(frame)  # the best layer is chosen by mIoU on both panels
    if best is not None:
        ax.plot(best["x"], best[column], marker="*", markersize=15, color=colour, markeredgecolor="black",
                markeredgewidth=0.6, zorder=5, linestyle="none")
        if clip and results.axis.segmented:
            ax.hlines(best[column], results.axis.boundaries()[0], x_max + 0.3, colors=[colour], linestyles=":",
                      linewidth=1.2, alpha=0.8)


# --------------------------------------------------------------------------------------------
# Prompt comparison
# --------------------------------------------------------------------------------------------

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
    handles = [Line2D([], [], color="C0", label="test mIoU"),
               Line2D([], [], color="C0", linestyle="--", label="running train mIoU"),
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
            best = best_row(frame)
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
