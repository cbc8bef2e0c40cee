"""Sessions page (the page the dashboard opens on): every session with one line on what happened,
its key numbers and its worst finding, in the picker's order."""

from __future__ import annotations

import sqlite3

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.data import summary
from dashboard.data.reports import report_memo, report_pending
from dashboard.data.sources import SessionSource
from profiler.errors import KvscopeError
from profiler.units import escape_markdown

SEVERITY_COLOR = {"CRITICAL": "red", "WARNING": "orange", "INFO": "blue"}


OPEN_KEY = "kvscope_sessions_open"


def _open(src: SessionSource) -> None:
    st.session_state[state.SESSION_KEY] = src.label
    st.session_state[state.CHOSEN_KEY] = src.label
    st.session_state[OPEN_KEY] = True


def card(src: SessionSource, rows: list[dict[str, str]]) -> None:
    """One session: name, its line, key numbers, worst finding, and a button to open it (while a
    large session is being diagnosed, once, only its name and that)."""
    with st.container(border=True):
        top = st.columns([6, 1.2])
        if report_pending(src.path):
            line = state.headline(src)
            top[0].markdown(f"**{escape_markdown(src.label)}**")
            top[0].markdown(escape_markdown(line) + "…")
            top[1].button("Open", key=f"open-{src.label}", icon=":material/arrow_forward:",
                          on_click=_open, args=(src,), help="Show this session's Overview")
            rows.append({"session": src.label, "what happened": line})
            return
        try:
            report = report_memo(src.path)[0]
        except (KvscopeError, sqlite3.DatabaseError, OSError) as exc:  # one line per bad file
            top[0].markdown(f"**{escape_markdown(src.label)}**")
            state.cannot_use(src.label, exc)
            rows.append({"session": src.label, "what happened": state.headline(src)})
            return
        status = "" if report["session"]["complete"] else " · :orange[incomplete recording]"
        top[0].markdown(f"**{escape_markdown(src.label)}**{status}")
        top[0].markdown(escape_markdown(report["headline"]))
        numbers = summary.key_numbers(report)
        top[0].caption(" · ".join(f"{escape_markdown(n.label)} {escape_markdown(n.text)}" for n in numbers))
        worst = summary.worst_text(report)
        if worst != "none":
            sev, code = worst.split(" ", 1)
            top[0].markdown(f"Worst finding: :{SEVERITY_COLOR.get(sev, 'gray')}[{sev}] "
                            f"{escape_markdown(code)}")
        else:
            top[0].markdown("Worst finding: none")
        top[1].button("Open", key=f"open-{src.label}", icon=":material/arrow_forward:",
                      on_click=_open, args=(src,), help="Show this session's Overview")
        rows.append({"session": src.label, "what happened": report["headline"], "worst finding": worst,
                     **{n.label: n.text for n in numbers}})


if st.session_state.pop(OPEN_KEY, None):
    st.switch_page("views/overview.py")
st.title("Sessions")
srcs = state.sources()
if not srcs:
    st.info("No sessions found: run `kvscope ui SESSION.kvscope`, or put sessions in "
            "~/.kvscope/sessions (or $KVSCOPE_SESSIONS_DIR).")
    st.stop()
st.caption(f"{len(srcs)} session{'s' if len(srcs) != 1 else ''}, in the picker's order. "
           "Open one to see its Overview; the sidebar picker carries the same lines.")
rows: list[dict[str, str]] = []
for src in srcs:
    card(src, rows)
state.csv_download(pd.DataFrame(rows), "sessions", "Sessions CSV")
pending = [src for src in srcs if report_pending(src.path)]
if pending:  # wait for their diagnosis (a spinner says so), then draw their cards
    with st.spinner(f"Diagnosing {', '.join(src.label for src in pending)} (once; stored in the "
                    "session)…"):
        for src in pending:
            try:
                report_memo(src.path)
            except (KvscopeError, sqlite3.DatabaseError, OSError):
                pass  # its card says why on the next run
    st.rerun()
