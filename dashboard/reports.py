"""The session's key numbers and findings from the profiler (report + diagnosis), remembered."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from dashboard.data import file_signature
from profiler.diagnosis import diagnose
from profiler.reader import open_session
from profiler.report import build_report

Report = tuple[dict[str, Any], list[dict[str, Any]]]

_MEMO: dict[tuple[str, int, float], Report] = {}
_LOCK = threading.Lock()


def compute_report(path: str | Path) -> Report:
    """``profiler.report.build_report`` of a session plus its diagnosis findings (as dicts)."""
    session = open_session(path)
    try:
        findings = [f.as_dict() for f in diagnose(session)]
        return build_report(session, findings=findings), findings
    finally:
        session.close()


def report_memo(path: str | Path) -> Report:
    """``compute_report`` remembered per (path, size, mtime) in this process (filled at start)."""
    key = file_signature(path)
    with _LOCK:
        hit = _MEMO.get(key)
    if hit is not None:
        return hit
    rep = compute_report(path)
    with _LOCK:
        _MEMO[key] = rep
        while len(_MEMO) > 8:
            _MEMO.pop(next(iter(_MEMO)))
    return rep
