"""KV events page: resident blocks vs capacity, evictions and re-stores, time evicted before re-store."""

from __future__ import annotations

import streamlit as st

from dashboard import kv_events as kv
from profiler.attach.derive import kv_event_summary
from profiler.reader import open_session
from profiler.schema import SessionFormatError


def _session_path() -> str | None:
    """The sidebar picker's session when it has one, else ``st.session_state["session_path"]``."""
    try:
        from dashboard import state
    except ImportError:
        state = None
    if state is not None and st.session_state.get(state.SESSION_KEY):
        src = state.current_source()
        if src is not None:
            return str(src.path)
    path = st.session_state.get("session_path")
    if path:
        return str(path)
    if state is not None:
        src = state.current_source()
        return str(src.path) if src is not None else None
    return None


def render() -> None:
    """Draw the page for the session chosen in ``st.session_state["session_path"]``."""
    st.title("KV-cache events")
    path = _session_path()
    if path is None:
        st.info("No session selected.")
        return
    try:
        session = open_session(path)
        summary = kv_event_summary(session)
        engines = session.table("engines")
        t0 = session.meta().get("started_unix_s") or summary.t_start_unix_s or 0.0
    except SessionFormatError as exc:
        st.error(f"Cannot open the session: {exc}")
        return
    if not summary.has_events:
        st.info("no KV events in this session. Record them with `kvscope attach URL "
                "--kv-events auto` on a server started with `--kv-events-config`.")
        return
    cols = st.columns(6)
    for col, (label, value, help_text) in zip(cols, kv.headline(summary), strict=True):
        col.metric(label, value, help=help_text)
    if summary.gaps:
        st.warning(f"{summary.gaps} interval(s) of KV events were lost; see the gaps table.")
    names = kv.engine_names(engines)
    st.altair_chart(kv.resident_chart(summary, float(t0), names))
    st.altair_chart(kv.rates_chart(summary, float(t0), names))
    if summary.restored_blocks:
        st.altair_chart(kv.evicted_time_chart(summary))
    else:
        st.caption("No block was re-stored after an eviction: no sign of prefix-cache thrash.")
    st.caption("Counted on the GPU tier. A re-store is a BlockStored of a hash that was evicted "
               "earlier: the engine recomputed a prefix block the cache had dropped.")


if __name__ == "__main__":
    render()
