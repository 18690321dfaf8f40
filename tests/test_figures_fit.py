"""Every figure of the demo report fits its canvas, and its labels do not run into each other.

The report embeds each PNG at its natural size (savefig without bbox_inches="tight"), so what
reaches past the canvas is cut off on the page: a legend wider than the figure loses its ends, a
title longer than its axes loses its tail. The figures are built from a fabricated results tree
shaped like config/demo.yaml (same models, layers and prompt ids such as
"describe_category+shuffled", so titles and legends are as long as the demo's), through
`build_report` itself, so every figure the page shows is checked, as the page draws it.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from layerprobe import config as lp_config
from layerprobe.report import sections
from tests.fake_results import build_tree_report, fabricate

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1.0  # pixels: antialiasing and rounding of text extents


def _name(artist: object) -> str:
    if isinstance(artist, Text):
        return f"text {artist.get_text()!r}"
    texts = [t.get_text() for t in getattr(artist, "texts", [])]
    if texts:  # a legend
        return f"legend ({', '.join(repr(t) for t in texts[:3])}{', …' if len(texts) > 3 else ''})"
    return type(artist).__name__


def _shown(text: Text) -> bool:
    return text.get_visible() and bool(text.get_text().strip())


def _tick_labels(ax: Axes, which: str) -> list[Text]:
    """The tick labels drawn (both sides), only those of ticks inside the view limits."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    if not axis.get_visible():
        return []
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    span = (high - low) * 1e-6
    labels = []
    for tick in axis.get_major_ticks():
        if tick.get_visible() and low - span <= tick.get_loc() <= high + span:
            labels += [t for t in (tick.label1, tick.label2) if _shown(t)]
    return labels


def _axes_labels(ax: Axes) -> list[Text]:
    """Every text of an axes that sits in the margin around it: ticks, axis labels, titles."""
    texts = _tick_labels(ax, "x") + _tick_labels(ax, "y")
    texts += [ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title]
    texts += [t for t in ax.texts if not t.get_clip_on()]  # e.g. segment names above the axes
    return [t for t in texts if _shown(t)]


def _figure_level(fig: Figure) -> list:
    parts = [*fig.legends, *fig.texts]
    parts += [t for t in (fig._suptitle, fig._supxlabel, fig._supylabel) if t is not None]
    return [p for p in parts if p.get_visible() and not (isinstance(p, Text) and not _shown(p))]


def _outside(box: Bbox, canvas: Bbox) -> bool:
    return (box.x0 < canvas.x0 - TOLERANCE or box.y0 < canvas.y0 - TOLERANCE
            or box.x1 > canvas.x1 + TOLERANCE or box.y1 > canvas.y1 + TOLERANCE)


def _overlap(a: Bbox, b: Bbox) -> bool:
    """The boxes share more than the tolerance in both directions (touching is fine)."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > TOLERANCE) and (min(a.y1, b.y1) - max(a.y0, b.y0) > TOLERANCE)


def _box(box: Bbox) -> str:
    return f"x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f}"


def fit_problems(name: str, fig: Figure) -> list[str]:
    """What of `fig` lies outside its canvas, and which labels overlap, each naming the artist."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    boxes: dict[int, Bbox] = {}

    def box(artist: object) -> Bbox:  # measured once: text extents are most of this check's time
        if id(artist) not in boxes:
            boxes[id(artist)] = artist.get_window_extent(renderer)
        return boxes[id(artist)]

    problems = []
    axes = [ax for ax in fig.axes if ax.get_visible()]
    labels = {ax: _axes_labels(ax) for ax in axes}
    figure_level = _figure_level(fig)
    named = figure_level + [a for ax in axes for a in labels[ax] + ([ax.legend_] if ax.legend_ else [])]
    for artist in named:
        if _outside(box(artist), canvas):
            problems.append(f"{name}: {_name(artist)} at {_box(box(artist))} reaches past the canvas {_box(canvas)}")
    tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # inches -> pixels
    if _outside(tight, canvas) and not problems:
        problems.append(f"{name}: tight bbox {_box(tight)} reaches past the canvas {_box(canvas)}")
    # Within one axes: x tick labels side by side, y tick labels stacked.
    for ax in axes:
        for which in ("x", "y"):
            for a, b in combinations(_tick_labels(ax, which), 2):
                if _overlap(box(a), box(b)):
                    problems.append(f"{name}: {which} tick labels {a.get_text()!r} and {b.get_text()!r} of axes "
                                    f"{ax.get_title()!r} overlap")
    # Across axes (neighbouring panels, a colour bar, a twin axis) and against figure legends/titles.
    for ax, other in combinations(axes, 2):
        for a in labels[ax]:
            for b in labels[other]:
                if _overlap(box(a), box(b)):
                    problems.append(f"{name}: {_name(a)} of axes {ax.get_title()!r} overlaps {_name(b)} of axes "
                                    f"{other.get_title()!r}")
    for part in figure_level:
        for ax in axes:
            for a in labels[ax]:
                if _overlap(box(part), box(a)):
                    problems.append(f"{name}: {_name(part)} overlaps {_name(a)} of axes {ax.get_title()!r}")
    return problems


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Fabricated results of config/demo.yaml (two LLaVA prompts, the oracle and its shuffled control)."""
    root = tmp_path_factory.mktemp("demo_like")
    config = lp_config.load(ROOT / "config" / "demo.yaml")
    config["dataset"]["root"] = str(root / "ADEChallengeData2016")
    config = lp_config.validate(config)
    assert "describe_category+shuffled" in lp_config.prompt_ids(config["models"]["tiny_llava"])
    return config, fabricate(root, config)


def test_every_report_figure_fits_its_canvas(demo_like: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config, results = demo_like
    checked: dict[str, list[str]] = {}
    add = sections.FigureSink.add

    def checking_add(self: sections.FigureSink, fig: Figure, name: str, caption: str, alt: str):
        checked[name] = fit_problems(name, fig)
        return add(self, fig, name, caption, alt)

    monkeypatch.setattr(sections.FigureSink, "add", checking_add)
    build_tree_report(config, results, results / "report.html")
    stores = ["tiny_vit.none", "tiny_llava.describe", "tiny_llava.describe_category",
              "tiny_llava.describe_category+shuffled"]
    expected = {"headline", "prompts_tiny_llava", "oracle_tiny_llava", "scan"}
    expected |= {f"{kind}_{s}" for kind in ("per_class", "qualitative", "curves") for s in stores}
    assert set(checked) == expected  # every figure of the page was checked
    problems = [p for name in sorted(checked) for p in checked[name]]
    assert not problems, f"{len(problems)} figure problem(s):\n" + "\n".join(problems)
