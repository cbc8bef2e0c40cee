"""Start the Streamlit server for ``kvscope ui`` with the dashboard's modules and sessions warm.

    python -m dashboard.serve [SESSION ...] [--host 127.0.0.1] [--port 8501]

Before serving, the dashboard's modules are imported and every offered session is summarised (from
its stored rollups; a session without them is scanned, about 1.5 s per million steps, and a large
one gets them stored once) and has its report and findings read (stored with a large session's
summaries, else diagnosed: about 5 s per million steps; the picker and the Sessions page show each
session's headline); the first one's Timeline chart is built in the background while the server
starts. The first page then draws from memory instead of reading a million-step file while the
user waits. A large session whose stored report is missing or stale (another kvscope's code) is
diagnosed in the background instead (minutes): its pages draw their charts meanwhile and say so.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
WARM_MAX = 16
"""Sessions summarised before serving (the rest load when first opened)."""


def warm(paths: list[Path], timeline: bool = True) -> None:
    """Load (and remember) every session's summary, report and findings, and (``timeline``) the
    first one's Timeline spec; bad files are left for the page to report. A large session whose
    report must be diagnosed first (``report_pending``: minutes) is left to ``warm_pending``."""
    from dashboard.data.reports import report_memo, report_pending
    from dashboard.data.session import load_session_memo
    from profiler.errors import KvscopeError

    for i, p in enumerate(paths):
        try:
            load_session_memo(p)
            if not report_pending(p):
                report_memo(p)  # every picker line is the session's headline
            if i == 0 and timeline:
                warm_timeline(p)
        except (KvscopeError, sqlite3.DatabaseError, OSError):
            continue


def warm_timeline(path: Path) -> None:
    """Build the Timeline's chart spec of ``path`` once (its spec cache keeps it); without the
    findings while its report is pending (they are marked once it is diagnosed)."""
    from dashboard.charts import timeline as tl
    from dashboard.data.reports import report_memo, report_pending
    from dashboard.data.session import load_session_memo
    from dashboard.data.steps import View
    from profiler.errors import KvscopeError

    try:
        data = load_session_memo(path)
        view = View(*data.serving_range(), tl.BUCKETS)
        tl.linked_chart(data, view, data.buckets(view), data.buckets(tl.whole_view(data)), None,
                        analysis=None if report_pending(path) else report_memo(path))
    except (KvscopeError, sqlite3.DatabaseError, OSError):
        pass


def warm_pending(paths: list[Path]) -> None:
    """In the background while the server runs: the first session's Timeline spec, then the
    reports still to diagnose (stored in each session for the next start), then that spec again
    with the findings when the first one's was among them."""
    from dashboard.data.reports import report_memo, report_pending
    from profiler.errors import KvscopeError

    if not paths:
        return
    warm_timeline(paths[0])
    pending = [p for p in paths if report_pending(p)]
    for p in pending:
        try:
            report_memo(p)
        except (KvscopeError, sqlite3.DatabaseError, OSError):
            continue
    if paths[0] in pending:
        warm_timeline(paths[0])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, warm up in the background, run ``streamlit run dashboard/app.py``."""
    ap = argparse.ArgumentParser(prog="python -m dashboard.serve")
    ap.add_argument("sessions", nargs="*")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8501)
    a = ap.parse_args(argv)
    if a.sessions:
        os.environ["KVSCOPE_UI_SESSIONS"] = os.pathsep.join(str(Path(s).resolve()) for s in a.sessions)
    import altair  # noqa: F401  (imported now rather than on the first page view)
    import pyarrow  # noqa: F401

    from dashboard.charts import panels as charts  # noqa: F401
    from dashboard.data.sources import discover_sessions

    paths = [s.path for s in discover_sessions()][:WARM_MAX]
    started = time.perf_counter()
    warm(paths, timeline=False)
    print(f"kvscope: {len(paths)} session(s) ready in {time.perf_counter() - started:.1f} s; "
          f"serving on http://{a.host}:{a.port}", flush=True)
    import streamlit.delta_generator
    from streamlit.web import cli as stcli

    # The first element a Streamlit process draws runs its "not under `streamlit run`?" check,
    # inspect.stack(), which resolves the file of every module loaded: 0.3-0.6 s of the first
    # page on a fresh server. This process is `streamlit run`: that warning is never due.
    streamlit.delta_generator._use_warning_has_been_displayed = True

    # Streamlit runs a full gc.collect() after every script run (runner.postScriptGC). Moving what
    # start-up built (modules, warm summaries) out of the collector's reach keeps that pass short:
    # it was 0.1-0.2 s of every zoom on a 1M-step session.
    gc.freeze()
    # The Timeline's spec (and any report still to diagnose) is built while the server starts,
    # not before it serves.
    threading.Thread(target=warm_pending, args=(paths,), name="kvscope-warm", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), "--server.address", a.host, "--server.port", str(a.port),
                "--server.headless", "true", "--browser.gatherUsageStats", "false",
                # A served tool, not an app under development: no source watching, no Deploy button.
                "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
    return int(stcli.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
