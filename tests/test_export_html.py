"""``kvscope export --format html``: a single file that opens offline, checked in headless Chromium
with the network off (issue 15).

Each bundled session's report is opened from ``file://`` in a context that is offline and aborts
every request that is not the file itself; the test counts the requests tried, the console errors
and the drawn charts, and reads the key numbers and findings off the page.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profiler.export.html_report import charts, export_html, key_numbers
from profiler.session.reader import open_session
from tests.support.engine import ROOT, kvscope
from tests.support.screenshots import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

SESSIONS = ROOT / "sessions"
BUNDLED = sorted(p.stem for p in SESSIONS.glob("*.kvscope"))
SHOTS = Path("/tmp/kvscope-export-shots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_offline(browser: Any, path: Path, shot: Path | None = None) -> dict[str, Any]:
    """Open ``path`` offline; what was requested, logged as an error, drawn and shown."""
    ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    tried: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith("file:"):
            r.continue_()
        else:
            tried.append(url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    n = page.eval_on_selector_all(".chart", "els => els.length")
    page.wait_for_function(
        f"document.querySelectorAll('.chart svg .mark-line path, .chart svg .mark-rect path, "
        f".chart svg .mark-area path').length >= {n}", timeout=30_000)
    drawn = page.eval_on_selector_all(
        ".chart", "els => els.map(e => [e.dataset.title, e.clientWidth, "
        "e.querySelectorAll('svg .mark-line path, svg .mark-rect path, svg .mark-area path')"
        ".length])")
    text = page.inner_text("body")
    imgs = page.eval_on_selector_all("img", "els => els.length")
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    ctx.close()
    return {"tried": tried, "errors": errors, "drawn": drawn, "text": text, "imgs": imgs}


@pytest.mark.parametrize("name", BUNDLED)
def test_html_report_opens_offline_with_every_chart(tmp_path: Path, browser: Any, name: str) -> None:
    out = tmp_path / f"{name}.html"
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        report = export_html(s, out)
        specs = charts(s, report)
    SHOTS.mkdir(exist_ok=True)
    seen = open_offline(browser, out, SHOTS / f"{name}.png")
    assert seen["tried"] == [] and seen["errors"] == []
    want = [title for title, spec, _ in specs if spec is not None]
    assert [d[0] for d in seen["drawn"]] == want
    assert all(width > 600 and marks > 0 for _, width, marks in seen["drawn"]), seen["drawn"]
    for title, spec, why in specs:
        if spec is None:
            assert f"{title}: {why}." in seen["text"]
    for label, value in key_numbers(report):
        assert f"{label}\n{value}" in seen["text"], label
    for f in report["findings"]:
        assert f["code"] in seen["text"] and f["message"] in seen["text"]
    assert "None" not in seen["text"].split() and "NaN" not in seen["text"].split()


def test_html_report_shows_hostile_session_text_as_text(tmp_path: Path, browser: Any) -> None:
    path = tmp_path / "hostile.kvscope"
    shutil.copyfile(SESSIONS / "kv_saturation.kvscope", path)
    model = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
    conn = sqlite3.connect(path)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (f'"{model}"',))
    conn.commit()
    conn.close()
    out = tmp_path / "hostile.html"
    res = kvscope("export", str(path), "--format", "html", "--out", str(out), timeout_s=180)
    assert res.returncode == 0, res.stderr
    seen = open_offline(browser, out)
    assert seen["imgs"] == 0 and seen["errors"] == [] and model in seen["text"]
