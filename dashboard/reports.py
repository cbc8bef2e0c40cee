"""The session's key numbers and findings from the profiler (report + diagnosis), remembered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dashboard.data import FileMemo
from profiler.diagnosis import diagnose
from profiler.reader import open_session
from profiler.report import build_report

Report = tuple[dict[str, Any], list[dict[str, Any]]]

def compute_report(path: str | Path) -> Report:
    """``profiler.report.build_report`` of a session plus its diagnosis findings (as dicts)."""
    session = open_session(path)
    try:
        findings = [f.as_dict() for f in diagnose(session)]
        return build_report(session, findings=findings), findings
    finally:
        session.close()


report_memo = FileMemo(compute_report)
"""``compute_report`` remembered per (path, size, mtime) in this process (filled at start)."""
