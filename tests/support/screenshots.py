"""Every page of the dashboard on every bundled session, as a person sees it in headless Chromium.

    python -m tests.support.screenshots [--out DIR] [--sessions NAME ...] [--pages PAGE ...]

Starts ``kvscope ui`` on the bundled sessions, opens each page of each session in a fresh tab,
waits until Streamlit is idle and the charts are painted, and saves ``SESSION-PAGE.png``. It prints
one line per page: charts drawn, errors and exceptions shown, and any bare "None"/"NaN" in the
page's text (values that were not measured must read as not measured).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.engine import ROOT
from tests.support.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHART = "[data-testid='stVegaLiteChart']"
PATHS_JS = """() => [...document.querySelectorAll(
  "[data-testid='stVegaLiteChart'] g.mark-line path, [data-testid='stVegaLiteChart'] g.mark-area path")]
  .map(p => p.getAttribute('d')).join('|')"""
"""Every line and area the page's charts draw, as SVG path data: it changes when a chart redraws
its data."""
PAGES = ("", "overview", "timeline", "memory", "kv_cache", "requests", "replay", "compare", "live",
         "kv_events", "whatif", "simulate", "preemptions", "tiers")
"""URL paths of the pages ("" is the Sessions page, the one the dashboard opens on)."""
BARE = re.compile(r"(?<![\w.])(None|NaN|nan)(?![\w.])")
MAX_SHOT_HEIGHT = 9000
"""Pixels: a longer page is shot down to here."""


@contextmanager
def ui_server(env_extra: dict[str, str] | None = None, log: Path | None = None) -> Iterator[str]:
    """``kvscope ui`` (bundled sessions) on a free loopback port; its base URL. Its output goes to
    ``log`` (and the last of it into the error when it does not start)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    env.update(env_extra or {})
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "profiler.cli", "ui", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("kvscope ui did not start in 180 s: "
                                   + (log.read_text()[-3000:] if log else "(no log)"))
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def shoot(browser: Any, url: str, path: Path) -> dict[str, Any]:
    """Open ``url``, wait for idle and painted charts, save the screenshot; what the page shows."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(url)
        page.wait_for_selector(IDLE, timeout=120_000)
        # the app is "notRunning" before its first run too: wait for the page's title, and for no
        # element still drawn as a placeholder (a loaded machine delivers them late)
        page.wait_for_selector("[data-testid='stMain'] :is(h1, h2)", timeout=120_000)
        page.wait_for_function("!document.querySelector(\"[data-testid='stSkeleton']\")", timeout=120_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        # charts paint after the script is idle: wait until their count is stable
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 2.0:
            n = page.locator(f"{CHART} svg.marks, {CHART} canvas").count()
            if n != last:
                last, stable_since = n, time.monotonic()
            page.wait_for_timeout(200)
        # the page scrolls inside stMain, so a full-page shot stops at the window: grow the window
        # to the page's height (charts re-lay out at the new size) and shoot the whole of it
        tall = int(page.evaluate("(document.querySelector(\"[data-testid='stMain']\") || "
                                 "document.body).scrollHeight"))
        if tall > 1800:
            page.set_viewport_size({"width": 1400, "height": min(tall + 40, MAX_SHOT_HEIGHT)})
            page.wait_for_timeout(1500)
        page.screenshot(path=str(path), full_page=True)
        text = page.locator("[data-testid='stMain']").inner_text()
        return {"charts": last,
                "errors": page.locator("[data-testid='stAlertContentError']").count(),
                "exceptions": page.locator("[data-testid='stException']").count(),
                "bare": sorted(set(BARE.findall(text)))}
    finally:
        page.close()


def main(argv: list[str] | None = None) -> int:
    """Screenshot the pages; exit 1 when any page shows an exception or a bare None/NaN."""
    ap = argparse.ArgumentParser(prog="python -m tests.support.screenshots")
    ap.add_argument("--out", default="/tmp/kvscope-shots")
    ap.add_argument("--sessions", nargs="*", default=None)
    ap.add_argument("--pages", nargs="*", default=list(PAGES))
    a = ap.parse_args(argv)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    sessions = a.sessions or sorted(p.stem for p in (ROOT / "sessions").glob("*.kvscope"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bad = 0
    with ui_server() as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for session in sessions:
            for page in a.pages:
                shot = out / f"{session}-{page or 'sessions'}.png"
                try:
                    seen = shoot(browser, f"{url}/{page}?session={session}", shot)
                except PlaywrightError as exc:  # one page that never settles does not stop the rest
                    seen = {"charts": -1, "errors": 0, "exceptions": 1, "bare": [str(exc).splitlines()[0]]}
                bad += bool(seen["exceptions"] or seen["bare"])
                print(f"{session:28} {page or 'sessions':10} charts {seen['charts']:2}  errors "
                      f"{seen['errors']}  exceptions {seen['exceptions']}  bare {seen['bare'] or '-'}",
                      flush=True)
        browser.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
