"""The report in a real browser (headless Debian Chromium over the DevTools pipe): every <img>
loads and is shown at a readable size, nothing runs off the page, the console stays clean, and
a full-page screenshot is written for a person to look at.

Runs on the demo run's own results/report.html (the session fixture `demo_run`), plus a report
fabricated for the full experiment config (9 model/prompt stores, all 150 ADE20K classes in the
per-class maps) to check the layout at real scale. LAYERPROBE_SCREENSHOTS=<dir> keeps the PNGs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from layerprobe import config as lp_config
from tests.browser import Rendered, ensure_chromium, render
from tests.fake_results import build_tree_report, fabricate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_chromium()
    except RuntimeError as err:
        print(f"skipping browser tests: {err}")
        pytest.skip(f"headless Chromium unavailable: {err}")


def _keep(paths: list[Path | None]) -> None:
    target = os.environ.get("LAYERPROBE_SCREENSHOTS")
    shown = [p for p in paths if p is not None]
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in shown:
            shutil.copy2(path, Path(target) / path.name)
    print("screenshots:", *shown)


def _check(rendered: Rendered, html: Path) -> None:
    expected = html.read_text().count("<img ")
    assert expected > 0 and len(rendered.images) == expected, (expected, rendered.images)
    assert not rendered.broken_images(), f"images that did not load: {rendered.broken_images()}"
    small = [i for i in rendered.images if i["shown_width"] < min(300, i["width"])]
    assert not small, f"figures squeezed below a readable width: {small}"
    assert not rendered.errors, f"console errors: {rendered.errors}"
    assert not rendered.overflow, f"elements wider than the page: {rendered.overflow}"
    with Image.open(rendered.screenshot) as shot:
        assert shot.width >= 1000 and shot.height >= 1500, shot.size  # the whole page, not the viewport
        colours = shot.convert("L").resize((64, 256)).getextrema()
        assert colours[1] - colours[0] > 100, "screenshot is blank"


def test_demo_report_in_chromium(chromium: str, demo_run: Path, tmp_path: Path) -> None:
    html = demo_run / "results/demo/report.html"
    assert html.is_file(), "the demo run did not write results/report.html"
    rendered = render(html, tmp_path / "demo_report.png", expanded=tmp_path / "demo_report_expanded.png")
    _keep([rendered.screenshot, rendered.expanded_screenshot])
    _check(rendered, html)
    assert len(rendered.images) >= 12  # headline, prompts, scan, 3 per-class, 3 predictions, 3 curves


def test_full_config_report_in_chromium(chromium: str, tmp_path: Path) -> None:
    config = lp_config.load(ROOT / "config" / "config.yaml")
    config["probe"]["epochs"] = 6  # fabricated curves; keeps the build short
    results = fabricate(tmp_path, config, classes=list(range(150)))
    build_tree_report(config, results, results / "report.html")
    rendered = render(results / "report.html", tmp_path / "full_report.png")
    _keep([rendered.screenshot])
    _check(rendered, results / "report.html")


def test_broken_image_and_console_error_are_caught(chromium: str, tmp_path: Path) -> None:
    """The checks above can fail: a missing image and a script error are both reported."""
    html = tmp_path / "bad.html"
    html.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<main><img id="gone" src="missing.png"><script>console.error("boom"); undefined_fn();</script>'
                    '<div id="wide" style="width:3000px">wide</div></main></body></html>')
    rendered = render(html, tmp_path / "bad.png")
    assert [i["id"] for i in rendered.broken_images()] == ["gone"]
    assert any("boom" in e for e in rendered.errors) and any("undefined_fn" in e for e in rendered.errors)
    assert "DIV#wide" in rendered.overflow
