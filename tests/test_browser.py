"""End to end: ``kvscope ui`` on the bundled sessions, every page opened in headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.screenshots import CHART, CHROMIUM, CHROMIUM_ARGS, IDLE, ui_server

pytestmark = pytest.mark.browser

SHOTS_FOR_LEAD = Path("/tmp/kvscope-shots")

# page path -> minimum charts drawn (CPU session, GPU session)
PAGES: dict[str, tuple[int, int]] = {
    "": (2, 2), "timeline": (1, 1), "memory": (1, 4), "kv_cache": (2, 2), "requests": (8, 8),
    "replay": (3, 3), "compare": (5, 5), "live": (3, 3),
}
SESSIONS = {"kv_saturation": 0, "gpu_h200x2_tp2": 1}




@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kvscope ui`` with no argument (bundled sessions, an empty user folder) on a free port."""
    empty = tmp_path_factory.mktemp("no-user-sessions")
    with ui_server({"KVSCOPE_SESSIONS_DIR": str(empty)},
                   log=tmp_path_factory.mktemp("ui-log") / "ui.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("screenshots")
    yield out
    SHOTS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
    for png in out.glob("*.png"):
        shutil.copy(png, SHOTS_FOR_LEAD / png.name)


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(url)
    page.wait_for_selector(f"{CHART} svg, {CHART} canvas", timeout=90_000)
    page.wait_for_selector(IDLE, timeout=90_000)
    page.wait_for_timeout(800)  # let Vega finish painting every chart
    return page


def drawn_charts(page: Any) -> int:
    """Charts whose Vega view has a non-empty drawing surface."""
    return int(page.evaluate(
        f"""() => [...document.querySelectorAll("{CHART}")].filter(el => {{
              const s = el.querySelector('svg.marks, canvas.marks, canvas');
              if (!s) return false; const r = s.getBoundingClientRect();
              return r.width > 50 && r.height > 30; }}).length"""))


@pytest.mark.parametrize("session", list(SESSIONS))
@pytest.mark.parametrize("path", list(PAGES))
def test_page_renders(server: str, browser: Any, shots: Path, session: str, path: str) -> None:
    page = open_page(browser, f"{server}/{path}?session={session}")
    try:
        assert page.locator("[data-testid='stException']").count() == 0, \
            page.locator("[data-testid='stException']").first.inner_text()
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        minimum = PAGES[path][SESSIONS[session]]
        assert drawn_charts(page) >= minimum
        if session == "kv_saturation" and path in ("", "timeline", "memory"):
            assert page.get_by_text("not measured on this machine (no NVML)").count() >= 1
        page.screenshot(path=str(shots / f"{session}-{path or 'overview'}.png"), full_page=True)
    finally:
        page.close()


def test_timeline_brush_zooms_every_panel(server: str, browser: Any, shots: Path) -> None:
    page = open_page(browser, f"{server}/timeline?session=kv_saturation")
    try:
        chart = page.locator(CHART).first
        before = page.locator("p", has_text="Showing").first.inner_text()
        box = chart.locator("g.role-frame > g > path.background").first.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 0.90 * box["width"], y)
        page.mouse.down()
        page.mouse.move(box["x"] + 0.97 * box["width"], y, steps=4)
        page.mouse.up()
        page.wait_for_function(
            "(b) => { const p = [...document.querySelectorAll('p')].find(e => e.innerText.startsWith('Showing'));"
            " return p && p.innerText !== b; }", arg=before, timeout=60_000)
        page.wait_for_selector(IDLE, timeout=60_000)
        after = page.locator("p", has_text="Showing").first.inner_text()
        assert after != before
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(shots / "kv_saturation-timeline-zoomed.png"), full_page=True)
    finally:
        page.close()
