"""The results page: `build_report(config, inputs, out_html, figures_dir)`.

collect (read the rule's inputs) -> figures/qualitative/tables (draw, summarise) -> sections (one
per topic) -> html (one self-contained page). PNGs and CSV tables also land in `figures_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import config as lp_config
from . import sections
from .collect import collect
from .html import page
from .inputs import ReportInputs

NAV = [("summary", "Layers"), ("prompts", "Prompts"), ("scan", "Layer scan"), ("per-class", "Per class"),
       ("qualitative", "Predictions"), ("curves", "Training"), ("resources", "Resources"), ("facts", "Run facts")]


def build_report(config: dict[str, Any], inputs: ReportInputs, out_html: Path, figures_dir: Path) -> None:
    """Write `out_html`, and its PNGs and tables into `figures_dir`."""
    config = lp_config.validate(config)
    out_html = Path(out_html)
    found = collect(config, inputs)
    if found.probes.empty:
        raise RuntimeError(f"no probe results among the report's inputs ({len(inputs.probes)} probes expected, "
                           f"e.g. {next(iter(inputs.probes.values())).metrics if inputs.probes else 'none'}); "
                           "nothing to report")
    sink = sections.FigureSink(Path(figures_dir))
    sections.write_tables(found, Path(figures_dir))
    parts = [sections.summary_section(found, sink), sections.prompt_section(found, sink),
             sections.scan_section(found, sink), sections.per_class_section(found, sink),
             sections.qualitative_section(found, sink), sections.curves_section(found, sink),
             sections.resources_section(found), sections.facts_section(found)]
    nav = [(a, t) for a, t in NAV if any(f'<section id="{a}"' in p for p in parts)]
    images = {s: int(v) for s, v in next(iter(found.data.values()), {}).get("images", {}).items()}
    subtitle = (f"{len(found.probes)} probes over {len(found.store_list())} (model, prompt) pairs · ADE20K-layout data"
                + (f" · {images.get('training', '?')} training / {images.get('validation', '?')} validation images"
                   if images else ""))
    html = page("layerprobe: segmentation information per layer", subtitle, nav, parts, sections.notices(found))
    tmp = out_html.with_suffix(".html.tmp")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out_html)  # a half-written report never looks finished
