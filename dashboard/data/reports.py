"""What the profiler's analysis says about a session (report + diagnosis, what-if, KV events),
computed once per file version and remembered in this process (``FileMemo``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from dashboard.data.session import FileMemo
from profiler.analysis.kv_events import KvEventSummary, kv_event_summary
from profiler.analysis.simulate import Model, model
from profiler.analysis.summarized import CACHE_NAME, report_and_findings
from profiler.analysis.summarized import whatif as summarized_whatif
from profiler.analysis.whatif import WhatIf
from profiler.session.reader import open_session
from profiler.session.summaries import must_compute

Report = tuple[dict[str, Any], list[dict[str, Any]]]


_DIAGNOSE = """import sys
from profiler.analysis.summarized import report_and_findings
from profiler.session.reader import open_session
with open_session(sys.argv[1]) as session:
    report_and_findings(session, quiet=True)
"""
"""A child process's script: diagnose the session and store the report in it."""


def compute_report(path: str | Path) -> Report:
    """``profiler.analysis.report.build_report`` of a session plus its diagnosis findings (as dicts).

    A large session that must be diagnosed first (minutes) is diagnosed by a child process, which
    stores the report in the file: the dashboard's page threads keep Python's GIL meanwhile (in
    this process the diagnosis slowed every page of the server, first charts included). Where it
    cannot be stored, it is computed here."""
    if must_compute(str(path), CACHE_NAME):
        root = Path(__file__).resolve().parents[2]  # where `profiler` imports from, as `dashboard`
        subprocess.run([sys.executable, "-c", _DIAGNOSE, str(path)], cwd=root, check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    with open_session(path) as session:
        return report_and_findings(session)


def compute_whatif(path: str | Path) -> WhatIf:
    """The what-if model of the session's busiest engine (stored with a large session's
    summaries); ValueError when it has no trace."""
    with open_session(path) as session:
        return summarized_whatif(session)


def compute_kv_events(path: str | Path) -> KvEventSummary:
    """Resident blocks, evictions and re-stores derived from the session's KV events."""
    with open_session(path) as session:
        return kv_event_summary(session)


def compute_model(path: str | Path) -> Model:
    """The session's scheduler model (``profiler.analysis.simulate``); NotAnalysable without demand."""
    with open_session(path) as session:
        return model(session)


report_memo = FileMemo(compute_report, size=64)
"""``compute_report`` remembered per (path, size, mtime) in this process (filled at start)."""


def report_pending(path: str | Path) -> bool:
    """True while the report of the session at ``path`` is not at hand: a large session whose
    stored report is missing or stale (new rows, or another kvscope's code) and that this process
    has not diagnosed yet; getting it means diagnosing every step (minutes on millions)."""
    return report_memo.peek(path) is None and must_compute(str(path), CACHE_NAME)


whatif_memo = FileMemo(compute_whatif)
kv_events_memo = FileMemo(compute_kv_events)
model_memo = FileMemo(compute_model)
