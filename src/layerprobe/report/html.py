"""HTML building blocks for a single self-contained page (inline CSS, images as data URIs), so
the report opens offline, from an e-mail attachment or inside `snakemake --report`."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1380px; margin: 0 auto; padding: 1.2em 2em 4em; background: #fff; }
header h1 { margin: 0.2em 0 0; font-size: 1.7em; }
header p.sub { margin: 0.2em 0 0.8em; color: #555; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 0.5em 0; z-index: 2; }
nav a { margin-right: 1.1em; color: #0b5cad; text-decoration: none; font-size: 0.95em; }
nav a:hover { text-decoration: underline; }
section { margin-top: 2.2em; }
h2 { border-bottom: 2px solid #e4e4e4; padding-bottom: 0.2em; font-size: 1.35em; }
h3 { font-size: 1.08em; margin: 1.3em 0 0.4em; }
p.intro { color: #333; max-width: 62em; }
figure { margin: 0.8em 0 1.4em; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; max-width: 62em; margin-top: 0.4em; }
.scroll { max-height: 900px; overflow: auto; border: 1px solid #eee; display: inline-block; max-width: 100%; }
.scroll img { border: 0; max-width: none; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.good { color: #1e7d45; font-weight: 600; } td.bad { color: #b3261e; font-weight: 600; }
td.flat { color: #888; } td.warn { background: #fff4d6; }
details { margin: 0.5em 0; border: 1px solid #e6e6e6; border-radius: 4px; padding: 0.3em 0.8em; }
details > summary { cursor: pointer; font-weight: 600; padding: 0.2em 0; }
.box { border-left: 4px solid #d98e04; background: #fff8e6; padding: 0.6em 1em; margin: 1em 0; }
.box.ok { border-color: #2e8b57; background: #eef8f1; }
pre { background: #f6f8fa; padding: 0.8em 1em; overflow: auto; font-size: 0.85em; border: 1px solid #eee; }
ul.classes { columns: 2; max-width: 46em; font-size: 0.92em; }
.muted { color: #777; }
"""


@dataclass
class EmbeddedFigure:
    name: str  # file stem in report_files/
    png: bytes
    caption: str
    alt: str


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure(fig: EmbeddedFigure, scroll: bool = False) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    img = f'<img src="data:image/png;base64,{data}" alt="{esc(fig.alt)}" id="fig-{esc(fig.name)}">'
    if scroll:
        img = f'<div class="scroll">{img}</div>'
    return f"<figure>{img}<figcaption>{fig.caption}</figcaption></figure>"


def details(summary: str, body: str, is_open: bool = False) -> str:
    return f"<details{' open' if is_open else ''}><summary>{esc(summary)}</summary>{body}</details>"


def box(text: str, ok: bool = False) -> str:
    return f'<div class="box{" ok" if ok else ""}">{text}</div>'


def section(anchor: str, title: str, body: str, intro: str = "") -> str:
    intro_html = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{intro_html}{body}</section>'


CellClass = Callable[[str, Any], str]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(frame: pd.DataFrame, digits: dict[str, int] | None = None, cell_class: CellClass | None = None) -> str:
    """A plain HTML table; numbers right-aligned, NaN shown as '–', optional per-cell CSS class."""
    if frame.empty:
        return '<p class="muted">(nothing to show)</p>'
    digits = digits or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            classes = ["num"] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
            if cell_class:
                classes.append(cell_class(str(column), value))
            attr = f' class="{" ".join(c for c in classes if c)}"' if any(classes) else ""
            cells.append(f"<td{attr}>{esc(fmt(value, digits.get(str(column), 4)))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, subtitle: str, nav: list[tuple[str, str]], sections: list[str], notices: str = "") -> str:
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"  # no favicon request: offline, no console error
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{esc(title)}</h1><p class=\"sub\">{subtitle}</p></header>"
            f"<nav>{links}</nav>{notices}{''.join(sections)}</main></body></html>\n")
