"""One finding as a card: what, where, one recommendation, the ``vllm serve`` flags to copy, the
stored traceback of an OOM, and the ways on: "Open in Timeline" and "Simulate".

Any page that lists findings (Overview; Live for findings as they happen) draws them with
``finding_cards`` so they read and behave the same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.data.session import SessionData
from profiler import units
from profiler.analysis.fixes import diff_text, flag_changes, flags_line, same_fix_as
from profiler.units import escape_markdown, is_number

SEVERITY_ICON = {"critical": ":material/error:", "warning": ":material/warning:",
                 "info": ":material/info:"}
SEVERITY_COLOR = {"critical": "red", "warning": "orange", "info": "blue"}
SIMULATED = ("num_gpu_blocks_override", "max_num_seqs", "gpu_memory_utilization")
"""Settings the Simulate page can predict (from the session's own demand)."""
SIMULATE_KEY = "simulate::finding"


def tracebacks(data: SessionData, finding: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, text) of the OOM/error events stored within the finding's range (±1 s)."""
    ev = data.events
    if ev.empty or not is_number(finding.get("t_start_s")):
        return []
    a = float(finding["t_start_s"]) - 1.0
    b = float(finding.get("t_end_s") if is_number(finding.get("t_end_s")) else finding["t_start_s"]) + 1.0
    rows = ev[ev["kind"].isin(["oom", "error"]) & (ev["t_s"] >= a) & (ev["t_s"] <= b)]
    out = []
    for r in rows.itertuples(index=False):
        try:
            details = json.loads(r.details_json) if isinstance(r.details_json, str) else {}
        except (ValueError, RecursionError):
            details = {}
        details = details if isinstance(details, dict) else {}
        tb = details.get("traceback")
        where = details.get("where")
        pid = units.fmt_pid(r.pid)
        title = f"{r.kind} at {r.t_s:.2f} s in {pid}" + (f" ({where})" if isinstance(where, str) else "")
        text = str(r.message or "")
        if isinstance(tb, str) and tb.strip():
            text = f"{text}\n\n{tb}" if text else tb
        out.append((title, text))
    return out


def simulate(data: SessionData, finding: dict[str, Any]) -> None:
    """Open the Simulate page on ``finding``'s settings."""
    st.session_state[SIMULATE_KEY] = {"path": str(data.path), "finding": finding}
    st.switch_page("views/simulate.py")


def finding_cards(data: SessionData, findings: list[dict[str, Any]], key: str = "finding") -> None:
    """Every finding of the session as a card (most severe first, as the report lists them)."""
    engine = data.engine()
    command = data.meta.get("command")
    repeats = same_fix_as(findings)
    for i, f in enumerate(findings):
        sev = str(f.get("severity"))
        with st.container(border=True):
            cols = st.columns([5, 1.6])
            rng = ""
            if is_number(f.get("t_start_s")):
                end = f["t_end_s"] if is_number(f.get("t_end_s")) else f["t_start_s"]
                rng = f" · {f['t_start_s']:.2f}–{end:.2f} s"
            # finding text quotes the session (OOM stage, event messages): text, not markup
            cols[0].markdown(f":{SEVERITY_COLOR.get(sev, 'gray')}[**{escape_markdown(f['code'])}**] · "
                             f"{escape_markdown(sev)}{rng}")
            cols[0].markdown(escape_markdown(f["message"]))
            changes = flag_changes(f.get("settings") or {}, engine, command)
            if i in repeats:
                cols[0].markdown(f":blue[→ same fix as {escape_markdown(repeats[i])} above]")
            elif f.get("recommendation"):
                cols[0].markdown(f":blue[→ {escape_markdown(f['recommendation'])}]")
                if changes:
                    cols[0].caption("The flags to change (copy with the button at the right of the block):")
                    cols[0].code(diff_text(changes, data.meta.get("model") or engine.get("model")),
                                 language="diff")
            for title, text in tracebacks(data, f):
                with cols[0].expander(f"Stored traceback: {title}"):
                    st.code(text, language="text")
            icon = SEVERITY_ICON.get(sev, ":material/info:")
            if is_number(f.get("t_start_s")) and cols[1].button("Open in Timeline", key=f"{key}-{i}", icon=icon,
                                                               help="highlight its range and show the panel "
                                                               "that shows it first"):
                state.open_finding(data, f)
            if any(k in SIMULATED for k in (f.get("settings") or {})) and cols[1].button(
                    "Simulate", key=f"{key}-sim-{i}", icon=":material/tune:",
                    help="predict preemptions, queueing and prefix hit rate at this setting "
                    "from this session's own requests"):
                simulate(data, f)
            if changes:
                cols[1].caption("flags: " + escape_markdown(flags_line(changes)))


def findings_table(findings: list[dict[str, Any]]) -> pd.DataFrame:
    """The findings as a small table (code, severity, range, recommendation)."""
    return pd.DataFrame([{"code": f["code"], "severity": f["severity"], "t_start_s": f.get("t_start_s"),
                          "t_end_s": f.get("t_end_s"), "recommendation": f.get("recommendation") or ""}
                         for f in findings])
