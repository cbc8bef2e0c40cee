"""Live page: follow a session that is still being recorded, last N minutes, refreshed in place."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import state
from dashboard.charts import panels as charts
from dashboard.data.session import load_recent
from dashboard.data.sources import SessionSource
from profiler import units
from profiler.errors import KvscopeError
from profiler.units import escape_markdown

st.title("Live")
src = state.current_source()
if src is None:
    st.info("No session selected.")
    st.stop()
c = st.columns([2, 1, 1])
window_min = c[0].slider("Show the last (minutes)", 0.5, 60.0, 5.0, step=0.5, key="live_window_min")
refresh_s = c[1].selectbox("Refresh every (s)", [1, 2, 5, 10], index=1, key="live_refresh_s")
following = c[2].toggle("Follow", value=True, key="live_follow", help="pause to inspect the charts")
st.caption(f"Following {escape_markdown(src.path)}. Start a recording with "
           "`kvscope record --session FILE -- python your_server.py` and open it here.")


def _ago(age_s: float) -> str:
    """A short "how long ago" for the metric card."""
    if age_s < 60:
        return f"{age_s:.1f} s ago"
    if age_s < 3600:
        return f"{age_s / 60:.0f} min ago"
    if age_s < 86400:
        return f"{age_s / 3600:.1f} h ago"
    return f"{age_s / 86400:.0f} days ago"


@st.fragment(run_every=float(refresh_s) if following else None)
def live_panel(source: SessionSource, window_s: float) -> None:
    """Re-read the window's rows of the session and redraw (only this fragment reruns)."""
    try:
        data, view, reqs = load_recent(source.path, window_s)
    except KvscopeError as exc:
        state.cannot_use(source.label, exc)
        return
    end_unix_s = data.start_unix_s + data.duration_s
    age_s = max(time.time() - end_unix_s, 0.0)
    recording = data.meta.get("ended_unix_s") is None
    m = st.columns(5)
    m[0].metric("Status", "recording" if recording and age_s < 30 else ("stopped" if recording else "finished"))
    m[1].metric("Last data", _ago(age_s))
    m[2].metric("Steps in window", f"{data.steps.total_steps:,}")
    m[3].metric("Finished in window", f"{len(reqs):,}")
    fine = data.steps.fine
    last_kv = float(fine.sort_values("t_hi_s")["kv_usage_frac_max"].iloc[-1]) if not fine.empty else None
    m[4].metric("KV usage (last bucket max)", units.fmt_pct(last_kv))
    b = fine
    state.show(charts.kv_usage_chart(b, view, data.num_blocks(), height=140), key="live-kv")
    state.show(charts.queue_chart(b, view, height=140), key="live-queue")
    state.show(charts.throughput_chart(b, view, height=140, smooth_s=1.0), key="live-tput")
    st.caption(f"Window {view.t0_s:,.1f}–{view.t1_s:,.1f} s since session start · updated "
               f"{time.strftime('%H:%M:%S')}")


live_panel(src, window_min * 60.0)
