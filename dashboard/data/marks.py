"""Time marks every time chart draws: engine start, OOMs, the findings' ranges (and whatever other
pages register), as one frame per session.

Columns of a marks frame: ``t_s``, ``t_end_s`` (equal to ``t_s`` for a moment), ``kind``, ``label``
(the tooltip), ``code`` (a finding's code, else ""). Other views add their own kinds by appending a
function to ``MARK_SOURCES`` (e.g. preemptions); ``dashboard.charts.marks`` draws any kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from dashboard.data.session import SessionData
from profiler.units import is_number

COLUMNS = ["t_s", "t_end_s", "kind", "label", "code"]

ENGINE_START, OOM, FINDING, FOCUS = "engine start", "OOM", "finding", "focus"
"""Mark kinds drawn by every time chart (``FOCUS`` = the finding a user opened, highlighted)."""

MarkSource = Callable[[SessionData], pd.DataFrame]
MARK_SOURCES: list[MarkSource] = []
"""Extra mark sources (a function of the session returning a marks frame); each is added to
``session_marks``. Register at import time of the module that owns the kind."""


def empty() -> pd.DataFrame:
    """A marks frame without rows (typed, so charts and Arrow accept it)."""
    return pd.DataFrame({"t_s": pd.Series(dtype=float), "t_end_s": pd.Series(dtype=float),
                         "kind": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                         "code": pd.Series(dtype=str)})


def _event_marks(events: pd.DataFrame) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if events.empty:
        return rows
    for ev in events[events["kind"].isin(["engine_start", "oom"])].itertuples(index=False):
        if not is_number(ev.t_s):
            continue
        if ev.kind == "engine_start":
            rows.append({"t_s": float(ev.t_s), "t_end_s": float(ev.t_s), "kind": ENGINE_START,
                         "label": f"engine start at {ev.t_s:.2f} s: {str(ev.message or '')[:120]}",
                         "code": ""})
        else:
            first = str(ev.message or "out of memory").splitlines()[0][:160]
            rows.append({"t_s": float(ev.t_s), "t_end_s": float(ev.t_s), "kind": OOM,
                         "label": f"OOM at {ev.t_s:.2f} s: {first}", "code": ""})
    return rows


def finding_marks(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One mark per finding with a time (its range; a moment for OOMs)."""
    rows = []
    for f in findings:
        a, b = f.get("t_start_s"), f.get("t_end_s")
        if not is_number(a):
            continue
        b = float(b) if is_number(b) else float(a)
        rows.append({"t_s": float(a), "t_end_s": max(b, float(a)), "kind": FINDING,
                     "label": f"{f.get('code')} ({f.get('severity')}) {float(a):.2f}–{b:.2f} s",
                     "code": str(f.get("code"))})
    return rows


def session_marks(data: SessionData, findings: list[dict[str, Any]],
                  focus: tuple[float, float, str] | None = None) -> pd.DataFrame:
    """Every mark of the session: engine start, OOMs, finding ranges, registered sources, and
    ``focus`` (t0, t1, code: the finding being looked at) as its own kind."""
    rows = _event_marks(data.events) + finding_marks(findings)
    if focus is not None:
        rows.append({"t_s": float(focus[0]), "t_end_s": float(max(focus[1], focus[0])), "kind": FOCUS,
                     "label": f"{focus[2]}: {focus[0]:.2f}–{focus[1]:.2f} s", "code": focus[2]})
    parts = [pd.DataFrame(rows, columns=COLUMNS)] if rows else []
    for source in MARK_SOURCES:
        extra = source(data)
        if extra is not None and not extra.empty:
            parts.append(extra.reindex(columns=COLUMNS))
    if not parts:
        return empty()
    out = pd.concat(parts, ignore_index=True)
    out["t_end_s"] = out["t_end_s"].fillna(out["t_s"])
    out[["kind", "label", "code"]] = out[["kind", "label", "code"]].fillna("").astype(str)
    return out.astype({"t_s": float, "t_end_s": float}).reset_index(drop=True)


def in_view(marks: pd.DataFrame, t0_s: float, t1_s: float) -> pd.DataFrame:
    """Marks that overlap [t0_s, t1_s], clipped to it (so nothing is drawn outside the plot)."""
    if marks.empty:
        return marks
    m = marks[(marks["t_end_s"] >= t0_s) & (marks["t_s"] <= t1_s)].copy()
    m["t_s"] = m["t_s"].clip(lower=t0_s, upper=t1_s)
    m["t_end_s"] = m["t_end_s"].clip(lower=t0_s, upper=t1_s)
    return m.reset_index(drop=True)


def next_mark(marks: pd.DataFrame, t_s: float, direction: int, kinds: set[str] | None = None,
              eps_s: float = 1e-6) -> float | None:
    """Start of the next (``direction`` 1) or previous (-1) mark of ``kinds`` after/before ``t_s``."""
    m = marks if kinds is None else marks[marks["kind"].isin(kinds)]
    if m.empty:
        return None
    t = m["t_s"].to_numpy(dtype=float)
    later = t[t > t_s + eps_s] if direction > 0 else t[t < t_s - eps_s]
    if later.size == 0:
        return None
    return float(later.min() if direction > 0 else later.max())
