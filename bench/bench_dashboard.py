"""Dashboard speed on a 1,000,000-step session, measured in headless Chromium.

    python bench/bench_dashboard.py [--source sessions/kv_saturation.kvscope] [--steps 1000000]
    python bench/bench_dashboard.py --zoom-only SESSION [--repeats 3]

Builds the session from real recorded steps (the source's rows replicated back to back with
shifted times), starts ``kvscope ui`` on it, and prints: seconds from opening a page on a fresh
server to its first drawn chart (target <= 3 s; a fresh browser context each time, so nothing is
cached), and, over eight brushes on the Timeline's navigator, seconds from the brush move to every
panel at the new range and from the mouse release to the full-resolution data drawn (target
< 0.5 s). The server's own start-up (summary, first report and Timeline spec built before it
serves) is printed separately: it happens before any browser opens the page.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support, when run as `python bench/bench_dashboard.py`

from profiler.errors import SessionFormatError  # noqa: E402
from profiler.session.reader import open_session  # noqa: E402
from tests.support.big_session import build_big_session  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.screenshots import CHROMIUM, CHROMIUM_ARGS, IDLE, PATHS_JS  # noqa: E402

CHART = "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg.marks"


FLOOR_APP = """import altair as alt
import pandas as pd
import streamlit as st
st.title("floor")
st.altair_chart(alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line().encode(x="x", y="y"))
"""
"""A one-chart Streamlit page: what any page costs on this machine before kvscope does anything."""


READY_S: list[float] = []
"""Seconds from starting each server to its health check answering (warm-up included)."""


@contextmanager
def ui_server(sessions: list[Path], floor_app: Path | None = None) -> Iterator[str]:
    """``kvscope ui SESSIONS`` (or ``floor_app`` under plain ``streamlit run``) on a free port;
    yields its base URL, stops it afterwards. Appends its start-up time to ``READY_S``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    if floor_app is not None:
        cmd = [sys.executable, "-m", "streamlit", "run", str(floor_app), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false"]
    else:
        cmd = [sys.executable, "-m", "profiler.cli", "ui", *map(str, sessions), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("kvscope ui did not come up in 120 s")
        READY_S.append(time.monotonic() - started)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _after_paint(page: Any) -> None:
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def first_chart_s(browser: Any, url: str, path: str) -> float:
    """Seconds from navigating to ``url/path`` to the first chart painted."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    t0 = time.perf_counter()
    page.goto(f"{url}/{path}")
    page.wait_for_selector(CHART, timeout=180_000)  # a slow page is a number, not a crash
    _after_paint(page)
    elapsed = time.perf_counter() - t0
    page.close()
    return elapsed


RELEASE_JS = "() => { const paths = " + PATHS_JS + """;
  // window.__kvscopeDrawnMs: from the mouse release to the frame after the first one whose lines
  // and areas differ from the brushed ones (the server's data for the new range drawn and painted); timed
  // in the page, so no round trip to the test driver is counted
  const brushed = paths();
  window.__kvscopeDrawnMs = null;
  window.addEventListener('pointerup', () => {
    const t0 = performance.now();
    const poll = () => {
      if (paths() === brushed) { requestAnimationFrame(poll); return; }
      requestAnimationFrame(() => { window.__kvscopeDrawnMs = performance.now() - t0; });
    };
    requestAnimationFrame(poll);
  }, {capture: true, once: true});
}"""

AXIS_LABELS_JS = """(el) => [...el.querySelectorAll('g.role-axis-label text')].map(t => t.textContent).join('|')"""


def zoom_s(browser: Any, url: str, fractions: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Brush the Timeline navigator over each (from, to) fraction of the session.

    Returns (visual, refined) seconds per zoom: from the brush move to every panel's axis showing
    the new range (drawn in the browser from the data it has), and from the mouse release to the
    server's full-resolution data for the new range drawn and painted (timed in the page).
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{url}/timeline")
    page.wait_for_selector(CHART, timeout=60_000)
    page.wait_for_selector(IDLE, timeout=60_000)
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    out = []
    for a, b in fractions:
        page.wait_for_timeout(800)
        # The navigator's plot area: the first view background with a height (the linked
        # timeline's outer group has an empty one), drawn as SVG.
        boxes = [b for b in (el.bounding_box() for el in
                             chart.locator("path.background").all()[:4])
                 if b is not None and b["height"] > 0]
        assert boxes, "navigator plot area not found"
        box = boxes[0]
        x0, w = box["x"], box["width"]
        y = box["y"] + box["height"] / 2
        before = chart.evaluate(AXIS_LABELS_JS)
        page.mouse.move(x0 + a * w, y)
        page.mouse.down()
        t0 = time.perf_counter()
        page.mouse.move(x0 + b * w, y, steps=1)
        page.wait_for_function(f"(b) => ({AXIS_LABELS_JS})(document.querySelector("
                               "\"[data-testid='stVegaLiteChart']\")) !== b", arg=before,
                               timeout=30_000)
        visual = time.perf_counter() - t0
        page.evaluate(RELEASE_JS)
        page.mouse.up()
        # A chart that cannot swap its datasets in keeps the brushed lines and still goes idle:
        # waiting for idle alone would time a zoom that never drew.
        page.wait_for_function("() => window.__kvscopeDrawnMs !== null", timeout=30_000)
        refined = page.evaluate("() => window.__kvscopeDrawnMs") / 1000
        page.wait_for_selector(IDLE, timeout=30_000)  # the rerun done before the next zoom
        out.append((visual, refined))
    page.close()
    return out


ZOOMS = [(0.5, 0.9), (0.6, 0.65), (0.1, 0.3), (0.62, 0.621), (0.3, 0.5), (0.05, 0.06),
         (0.8, 0.99), (0.4, 0.41)]
"""Brushes as fractions of the navigator: wide, narrow, and deep enough to read raw steps."""


def zoom_passes(session: Path, servers: int, passes: int) -> list[list[tuple[float, float]]]:
    """The zooms alone on an existing session: per fresh server (first chart drawn first), the
    eight ``ZOOMS`` ``passes`` times over; (brush, release) seconds per zoom."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(servers):
            with ui_server([session]) as url:
                first_chart_s(browser, url, "timeline")
                out.append(zoom_s(browser, url, ZOOMS * passes))
        browser.close()
    return out


def measure(sessions: dict[str, Path], big: Path, repeats: int = 2) -> dict[str, Any]:
    """Cold first-chart times (fresh server per page load) per session and page; zoom on ``big``."""
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        floor_app = big.parent / "floor_app.py"
        floor_app.write_text(FLOOR_APP)
        floor = []
        for _ in range(repeats):
            with ui_server([], floor_app) as url:
                floor.append(first_chart_s(browser, url, ""))
        results[("one-chart Streamlit page (floor)", "floor")] = floor
        for label, session in sessions.items():
            for page_path in ("overview", "timeline"):
                cold = []
                for _ in range(repeats):
                    with ui_server([session]) as url:
                        cold.append(first_chart_s(browser, url, page_path))
                results[(label, page_path)] = cold
            results[("ready", label)] = READY_S[-2 * repeats:]
        with ui_server([big]) as url:
            first_chart_s(browser, url, "timeline")
            time.sleep(3)
            results["zoom"] = zoom_s(browser, url, ZOOMS)
        browser.close()
    return results


def _main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(Path(__file__).resolve().parent.parent / "sessions"
                                            / "kv_saturation.kvscope"))
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--keep", default=None, help="write the big session here and keep it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zoom-only", type=Path, default=None, metavar="SESSION",
                    help="only the zooms, on this existing session (--repeats servers, 16 zooms each)")
    a = ap.parse_args()
    if a.zoom_only is not None:
        for run in zoom_passes(a.zoom_only, a.repeats, passes=2):
            ref = [r for _, r in run]
            print(f"load {os.getloadavg()[0]:.1f}; release: " + " ".join(f"{r:.3f}" for r in ref)
                  + f"; median {statistics.median(ref):.3f} s, {sum(r < 0.5 for r in ref)} of {len(ref)}"
                  f" under 0.5 s; brush median {statistics.median(v for v, _ in run):.3f} s", flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="kvscope-bench-"))
    dest = Path(a.keep) if a.keep else tmp / "big.kvscope"
    t = time.perf_counter()
    try:
        n = build_big_session(a.source, dest, a.steps)
    except (sqlite3.Error, ValueError, SessionFormatError) as exc:
        raise SystemExit(f"bench: {exc}") from exc
    print(f"built {dest}: {n:,} steps, {dest.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t:.1f} s")
    src_steps = build_steps = None
    try:
        src_steps = open_session(a.source).scalar("SELECT COUNT(*) FROM steps")
        build_steps = n
    except SessionFormatError:
        pass
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start")
    res = measure({f"source ({src_steps:,} steps)": Path(a.source), f"big ({build_steps:,} steps)": dest},
                  dest, a.repeats)
    for key, cold in res.items():
        if key == "zoom" or key[0] == "ready":
            continue
        label, page = key
        print(f"first chart, fresh server, {page:9s} {label:26s}: " + ", ".join(f"{x:.2f} s" for x in cold)
              + f"   worst/target(3 s) = {max(cold) / 3.0:.2f}")
    for key, ready in res.items():
        if key != "zoom" and key[0] == "ready":
            print(f"server start (summary, first report and Timeline built) {key[1]:26s}: "
                  f"{min(ready):.1f}-{max(ready):.1f} s, before the browser opens the page")
    z = res["zoom"]
    vis = [v for v, _ in z]
    ref = [r for _, r in z]
    print("zoom, brush -> every panel at the new range: " + ", ".join(f"{x:.3f}" for x in vis)
          + f" s   median {statistics.median(vis):.3f} s, worst/target(0.5 s) = {max(vis) / 0.5:.2f}")
    print("zoom, release -> full-resolution data drawn:  " + ", ".join(f"{x:.3f}" for x in ref)
          + f" s   median {statistics.median(ref):.3f} s, worst/target(0.5 s) = {max(ref) / 0.5:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (timings scale with it on a shared machine)")


if __name__ == "__main__":
    _main()
