"""KV events page: resident blocks vs capacity, evictions and re-stores, time evicted before re-store."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.charts import kv_events as kv
from dashboard.charts import marks as chart_marks
from dashboard.data import marks as mk
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler.units import escape_markdown


def render(data: SessionData) -> None:
    """Draw the page for ``data``."""
    st.title(f"KV-cache events · {escape_markdown(data.name)}")
    summary = state.kv_events(data)
    engines = data.engines
    t0 = data.start_unix_s
    if not summary.has_events:
        st.info("No KV events in this session. Record them with `kvscope record --kv-events`, or "
                "`kvscope attach URL --kv-events auto` on a server started with `--kv-events-config`.",
                icon=":material/info:")
        return
    cols = st.columns(6)
    for col, (label, value, help_text) in zip(cols, kv.headline(summary), strict=True):
        col.metric(label, value, help=help_text)
    if summary.gaps:
        st.warning(f"{summary.gaps} interval(s) of KV events were lost; see the gaps table.")
    names = kv.engine_names(engines)
    view = View(*kv.time_domain(summary, float(t0)))
    marks = mk.session_marks(data, state.report(data)[1], state.get_focus(data))
    st.altair_chart(chart_marks.with_marks(kv.resident_chart(summary, float(t0), names), marks, view))
    st.altair_chart(chart_marks.with_marks(kv.rates_chart(summary, float(t0), names), marks, view))
    st.caption(chart_marks.LEGEND_TEXT)
    if summary.restored_blocks:
        st.altair_chart(kv.evicted_time_chart(summary))
    else:
        st.caption("No block was re-stored after an eviction: no sign of prefix-cache thrash.")
    st.caption("Counted on the GPU tier. A re-store is a BlockStored of a hash that was evicted "
               "earlier: the engine recomputed a prefix block the cache had dropped.")


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        render(data)
