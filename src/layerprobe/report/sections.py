"""One function per report section: draws its figures, saves them, returns its HTML."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from .. import config as lp_config
from . import figures, qualitative, style, tables
from .collect import Results, Store, model_data
from .deltas import best_worst_classes, oracle_deltas, prompt_deltas
from .facts import attention_facts, run_facts, software_facts
from .html import EmbeddedFigure, box, details, esc, figure, section, table
from .style import IDENTICAL, plt, store_label


class FigureSink:
    """Renders a Figure to PNG once: written to report_files/ and embedded in the page."""

    def __init__(self, folder: Path, dpi: int = 100) -> None:
        self.folder, self.dpi = folder, dpi
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.png"):  # figures of a previous build (e.g. a store since removed)
            stale.unlink()

    def add(self, fig: Figure, name: str, caption: str, alt: str) -> EmbeddedFigure:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        plt.close(fig)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        (self.folder / f"{safe}.png").write_bytes(buffer.getvalue())
        return EmbeddedFigure(safe, buffer.getvalue(), caption, alt)


def _slug(store: Store) -> str:
    """File stem per store; '.' never occurs in model or prompt ids, so stems are unique."""
    return f"{store[0]}.{store[1]}"


def _best_store(results: Results) -> Store | None:
    valid = results.probes.dropna(subset=["miou"])
    if valid.empty:
        return None
    best = valid.loc[valid["miou"].idxmax()]
    return best["model"], best["prompt"]


DELTA_CLASSES = {style.GREEN: "good", style.RED: "bad", style.GREY: "flat", style.LIGHT_GREY: "flat"}


def _delta_class(column: str, value: object) -> str:
    """Green/red for a difference whose paired interval excludes 0, grey for one that does not."""
    if isinstance(value, tables.Difference) and not np.isnan(value.delta):
        return DELTA_CLASSES[value.colour]
    return ""


# --------------------------------------------------------------------------------------------

def write_tables(results: Results, folder: Path) -> None:
    """The numbers behind the figures, with their intervals, as CSV beside the PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    tables.probes_csv(results).to_csv(folder / "probes.csv", index=False)
    prompt_deltas(results).drop(columns=["tick"]).to_csv(folder / "prompt_deltas.csv", index=False)
    oracle_deltas(results).drop(columns=["tick"]).to_csv(folder / "oracle_deltas.csv", index=False)


def summary_section(results: Results, sink: FigureSink) -> str:
    fig = sink.add(figures.headline(results), "headline",
                   "Left: validation mIoU (mmseg definition: intersections and unions summed over the split) of a "
                   "linear probe per layer, with its 95% bootstrap interval over validation images as a band; right: "
                   "pixel accuracy. One line per model and prompt; CLIP dashed, LLaVA "
                   "solid. ★ marks each line's best layer by mIoU (the same layer on both panels); whether it beats "
                   "the next best layer beyond noise is in the table above (paired interval). "
                   + ("Error bars: mean ± sd of the probe over its seeds (probe.seeds), the training noise the "
                      "band does not include. " if results.probes["seeds"].max() > 1 else "")
                   + ""
                   + ("The dotted borders split LLaVA's forward path into vision tower, projector and LLM. CLIP blocks "
                      "are drawn at their relative depth within the vision segment; a dotted horizontal line carries "
                      "each CLIP model's best mIoU across the LLM segment as a reference. "
                      if results.axis.segmented else ""),
                   "mIoU and pixel accuracy per layer")
    body = table(tables.summary(results), digits={"pixel acc": 4, "last layer mIoU": 4}, cell_class=_delta_class)
    body += ('<p class="muted">Intervals: 95% bootstrap over validation images (the probes are fixed; images are '
             "resampled with replacement and the mIoU is recomputed from their summed counts). Differences are "
             "paired: both sides are scored on the same resampled images. A difference whose interval contains 0 "
             "is grey and marked n.s. (not significant): the validation set cannot tell the two apart. Every "
             "probe with its interval: <code>report_files/probes.csv</code>; every prompt difference: "
             "<code>report_files/prompt_deltas.csv</code>.</p>")
    checks = "".join(box("<b>Check:</b> " + esc(text)) for text in tables.diagnostics(results))
    return section("summary", "Which layer?", checks + body + geometry_note(results) + figure(fig),
                   "Best layer per model and prompt (by validation mIoU), then every probed layer.")


def geometry_note(results: Results) -> str:
    """Which protocol each model's numbers follow, when a run holds the pad geometry."""
    config = results.config
    pads = [m for m in config["models"] if lp_config.geometry(config, m) == "pad"]
    if not pads:
        return ""
    crops = [m for m in config["models"] if m not in pads]
    parts = []
    for model in pads:
        rows = results.probes[results.probes["model"] == model].dropna(subset=["whole_image_miou"])
        best = rows.loc[rows["whole_image_miou"].idxmax()] if not rows.empty else None
        parts.append(f"<b>{esc(model)}</b>" + ("" if best is None else
                     f" (best whole-image mIoU {best['whole_image_miou']:.4f}, {esc(best['layer'])})"))
    text = ("<b>Geometry.</b> " + ", ".join(parts) + ": <i>pad</i>, LLaVA-1.5's own preprocessing (padded to a "
            "square with the model's mean colour). Their mIoU here is at the model's resolution with the padding "
            "ignored; their whole-image mIoU scores every validation image at its original size on its whole "
            "annotation, as mmseg does, comparable with published ADE20K linear-probe results.")
    if crops:
        text += (" " + ", ".join(f"<b>{esc(m)}</b>" for m in crops) + ": <i>centre crop</i> (the researcher's "
                 "protocol), scored on labels at the crop.")
    return f"<p>{text}</p>"


def prompt_section(results: Results, sink: FigureSink) -> str:
    deltas = prompt_deltas(results)
    if deltas.empty:
        return section("prompts", "Which prompt?", '<p class="muted">Only one prompt per model: nothing to '
                                                   "compare.</p>" + oracle_part(results, sink))
    parts = []
    for model in dict.fromkeys(deltas["model"]):
        frame = deltas[deltas["model"] == model]
        fig = sink.add(figures.prompt_comparison(results, deltas, model), f"prompts_{model}",
                       f"mIoU of each prompt minus the general prompt (“{esc(frame['base'].iloc[0])}”, the first "
                       f"without a {{category}} placeholder) at every probed layer of {esc(model)}, both probes "
                       "scored on the same validation images, with the paired bootstrap 95% interval of each "
                       "difference (the same resampled images for both prompts). Green: the prompt helps and the "
                       "interval excludes 0; red: it hurts and the interval excludes 0; light grey: not significant "
                       f"(the interval contains 0); grey: identical (|Δ| &lt; {IDENTICAL:g}). Vision-tower and "
                       "projector layers come before the LLM, so they "
                       "cannot depend on the prompt and are expected to be identical.",
                       f"prompt comparison for {model}")
        parts.append(f"<h3>{esc(model)}</h3>" + figure(fig))
    return section("prompts", "Which prompt?", "".join(parts) + oracle_part(results, sink))


def oracle_part(results: Results, sink: FigureSink) -> str:
    """The oracle check: a `{category}` prompt filled with each image's ground-truth class
    (dominant) minus the same prompt filled with another image's class (shuffled)."""
    deltas = oracle_deltas(results)
    if deltas.empty:
        return ""
    parts = ['<h3>Oracle check: does the <i>correct</i> class help?</h3><p class="intro">With '
             "<code>category_fill: dominant</code> a <code>{category}</code> prompt carries each image's "
             "ground-truth dominant class, on the validation split too: the image tokens are conditioned on part "
             "of the answer the probe is scored on. Its <code>shuffled</code> control fills another image's class "
             "(same classes, wrong image). The oracle effect is dominant minus shuffled, paired over the same "
             "images; a prompt that helps only with the correct class reads the hint, it does not see more.</p>",
             table(tables.oracle_summary(results, deltas), cell_class=_delta_class)]
    for model in dict.fromkeys(deltas["model"]):
        fig = sink.add(figures.prompt_comparison(results, deltas, model, better="oracle better",
                                                 worse="oracle worse"),
                       f"oracle_{model}",
                       f"{esc(model)}: mIoU with the ground-truth class in the prompt minus mIoU with another "
                       "image's class (the shuffled control), per layer, with the paired bootstrap 95% interval. "
                       "Green/red: the interval excludes 0; light grey: not significant.",
                       f"oracle check for {model}")
        parts.append(figure(fig))
    return "".join(parts)


def scan_section(results: Results, sink: FigureSink) -> str:
    if not results.config["scan"]["enabled"]:
        return ""
    stores = tables.scanned_stores(results)
    if not stores:
        return section("scan", "Layer scan", '<p class="muted">Scan enabled but no scan results found.</p>')
    held_out = results.config["scan"]["holdout_fraction"]
    fig = sink.add(figures.scan_figure(results, stores), "scan",
                   "Layer scan (closed-form ridge probes fitted on the fly for every layer, no features stored; "
                   "thin line) beside the trained linear probes (thick line). Each layer's ridge penalty is chosen "
                   f"on held-out training images ({held_out * 100:g}% of them, scan.holdout_fraction, left out of the "
                   "fit); the validation split is then scored once, with that penalty, so the scan's validation "
                   "mIoU is not tuned on validation. The two need not agree in absolute "
                   "mIoU (the scan regresses label distributions on the token grid, without training epochs); what "
                   "matters is whether the scan ranks layers like the probes, so it can pick the layers worth "
                   "extracting. ✚ scan's best layer, ★ probe's best layer.", "layer scan vs probes")
    agreement = tables.scan_agreement(results)
    return section("scan", "Layer scan", figure(fig) + "<h3>Rank agreement with the probes</h3>"
                   + table(agreement, digits={"Spearman ρ": 3})
                   + '<p class="muted">Spearman ρ over the layers both probed and scanned (1 = same order).</p>')


def per_class_section(results: Results, sink: FigureSink) -> str:
    best_store = _best_store(results)
    parts, frequencies = [], {}
    for store in results.store_list():
        if store not in results.per_class:
            continue
        data_name = model_data(results.config, store[0])
        if data_name not in frequencies:
            frequencies[data_name] = qualitative.class_frequency(results, data_name)
        classes = qualitative.present_classes(results, store, frequencies[data_name])
        if not classes:
            continue
        fig = sink.add(figures.per_class_heatmap(results, store, classes, frequencies[data_name]),
                       f"per_class_{_slug(store)}",
                       "Validation IoU per class (rows: classes present in the validation ground truth, most "
                       "frequent first, with their share of labelled pixels) and layer (columns, forward order). "
                       "Grey: no IoU (class neither labelled nor predicted).",
                       f"per-class IoU for {store_label(store, results.config)}")
        parts.append(details(store_label(store, results.config),
                             _best_worst(results, store, classes) + figure(fig, scroll=True),
                             is_open=store == best_store))
    return section("per-class", "Per-class IoU", "".join(parts),
                   "Which classes each layer separates. The best overall (model, prompt) is expanded.")


def _best_worst(results: Results, store: Store, classes: list[int]) -> str:
    """Best and worst classes at the best layer; at most half the classes each, so no class is in both."""
    info = best_worst_classes(results, store, classes, n=5)
    if info["layer"] is None:
        return ""
    items = lambda pairs: " · ".join(f"{esc(n)} <b>{v:.3f}</b>" for n, v in pairs)  # noqa: E731
    return (f"<p>At the best layer <b>{esc(info['layer'])}</b> — best classes: {items(info['best'])}<br>"
            f"worst classes: {items(info['worst'])}</p>")


def qualitative_section(results: Results, sink: FigureSink) -> str:
    best_store = _best_store(results)
    parts = []
    for store in results.store_list():
        fig = qualitative.qualitative_panel(results, store)
        if fig is None:
            continue
        embedded = sink.add(fig, f"qualitative_{_slug(store)}",
                            "Fixed validation images (the first ids in sorted order, the same for every model), "
                            "then ground truth and the probe's predictions at the shallowest, best and deepest probed "
                            "layer, as class colours over a greyscale copy of the image. Colours are fixed per class "
                            "across all panels and reports (legend below each panel); dark is unlabelled (ignored) "
                            "ground truth.",
                            f"qualitative predictions for {store_label(store, results.config)}")
        parts.append(details(store_label(store, results.config), figure(embedded), is_open=store == best_store))
    if not parts:
        return section("qualitative", "Predictions", '<p class="muted">No predictions or data store found.</p>')
    return section("qualitative", "Predictions", "".join(parts))


def curves_section(results: Results, sink: FigureSink) -> str:
    parts = []
    for i, store in enumerate(results.store_list()):
        fig = sink.add(figures.training_curves(results, store), f"curves_{_slug(store)}",
                       "Per layer: training loss (grey, right axis), running train mIoU (dashed: accumulated over the "
                       "epoch's batches in train mode while the head changes, so a trend rather than the trained "
                       "head's score) and test mIoU (left axis, shared by all panels) per epoch; ★ the epoch with "
                       "the best test mIoU. A best epoch at the last epoch "
                       "suggests more epochs would help.", f"training curves for {store_label(store, results.config)}")
        parts.append(details(store_label(store, results.config), figure(fig), is_open=i == 0))
    return section("curves", "Training curves", "".join(parts))


def resources_section(results: Results) -> str:
    usage = tables.resources_table(results)

    def flag(column: str, value: object) -> str:
        if column == "peak / requested" and isinstance(value, float) and not np.isnan(value):
            return "bad" if value > 1 else ("warn" if value < 0.25 else "")
        if column == "wall / requested" and isinstance(value, float) and not np.isnan(value):
            return "bad" if value > 1 else ""
        return ""

    body = ("<h3>Requested vs measured, per rule</h3>"
            + table(usage, digits={"peak / requested": 2, "wall / requested": 3, "billing/job requested": 0,
                                   "billing/job at peak RSS": 0, "billing-hours requested": 2,
                                   "billing-hours at peak RSS": 2}, cell_class=flag)
            + '<p class="muted">Requested: <code>layerprobe.resources</code> (what the rules ask the scheduler for; '
              "RAM is billed, so keep <i>peak / requested</i> close to 1 — highlighted below 0.25, red above 1). "
              "Measured: Snakemake benchmark files (peak resident memory, wall-clock seconds) of the worst job. "
              "Billing: SLURM's billing units (<code>layerprobe.billing</code>, <code>cluster.billing_weights</code>; "
              "without weights SLURM bills CPUs only) of the job as requested, and as it would have been with its "
              "peak RSS as the memory request; billing-hours multiply by each job's wall time.</p>"
            + details("Every job", table(tables.jobs_table(results), digits={"peak / requested": 2}, cell_class=flag))
            + "<h3>Stores on disk</h3>" + table(tables.store_sizes(results))
            + '<p class="muted">Measured: the bytes of every file under the store now (the manifest\'s number when '
              "the store is not on this machine). Planned: <code>layerprobe plan</code>'s arithmetic for the images "
              "the store holds. Feature stores are uncompressed, so they match the plan up to Zarr metadata and "
              "progress markers; data stores are compressed and come in below the plan's upper bound.</p>")
    return section("resources", "Resources", body)


def facts_section(results: Results) -> str:
    software, warnings = software_facts(results.versions)
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in
                    run_facts([f.metrics for f in results.inputs.probes.values()], results.workdir())
                    + attention_facts(results.config) + software)
    warned = "".join(box(f"<b>Versions differ:</b> {esc(w)}. Results are not rerun for a new version; "
                         "rerun with <code>--forcerun</code> where a change matters.") for w in warnings)
    config = yaml.dump(results.config, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True,
                       default_flow_style=None, width=110)
    prints = "".join(f"<tr><td><code>{esc(path)}</code></td><td><code>{esc(fp)}</code></td></tr>"
                     for path, fp in results.fingerprints)
    fingerprints = details(f"Fingerprints of the {len(results.fingerprints)} results shown (each matches the config)",
                           '<p class="muted">A fingerprint is the hash of the config keys (and data digest) that '
                           "shape a result (<code>layerprobe/fingerprint.py</code>); every result records its own, "
                           "and the report refuses one that differs from the config's.</p>"
                           f"<table><tr><th>result</th><th>fingerprint</th></tr>{prints}</table>")
    return section("facts", "Run facts and config",
                   warned + f"<table>{facts}</table>" + details("Config (validated, defaults filled in)",
                                                       f"<pre>{esc(config)}</pre>") + fingerprints)


class _ConfigDumper(yaml.SafeDumper):
    """Strings with newlines (prompt formats) as one double-quoted line with \\n, as written in YAML."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = '"' if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def notices(results: Results) -> str:
    if not results.missing:
        return ""
    shown = "".join(f"<li><code>{esc(p)}</code></li>" for p in results.missing[:20])
    more = f"<li>… and {len(results.missing) - 20} more</li>" if len(results.missing) > 20 else ""
    return box(f"<b>Incomplete results:</b> {len(results.missing)} expected file(s) are missing; the figures show "
               f"what exists.<ul>{shown}{more}</ul>")
