"""Live page: follow a session while it is being made, last N minutes, refreshed in place.

Every number on the page is ``kvscope report --last-s N`` of the same window (``profiler.analysis
.live.live_window``): the counts, the latency percentiles (with their histogram bucket for attach
sessions), and the findings of the diagnosis rules, plus forecasts where the trend says so.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from dashboard import state
from dashboard.charts import live as live_charts
from dashboard.charts import panels as charts
from dashboard.data.session import file_signature, load_recent
from dashboard.data.sources import SessionSource
from dashboard.findings_ui import finding_cards
from profiler import units
from profiler.analysis import live
from profiler.errors import KvscopeError
from profiler.units import escape_markdown

STATUS_ICON = {live.RECORDING: ":green[:material/radio_button_checked:]",
               live.IDLE: ":orange[:material/pause_circle:]",
               live.STOPPED: ":gray[:material/stop_circle:]",
               live.LOST: ":red[:material/error:]",
               live.FINISHED: ":blue[:material/check_circle:]"}
START_HINT = {
    "attach": "Attach again with `kvscope attach http://HOST:PORT --session NEW.kvscope` and open "
              "it here.",
    "record": "Record again with `kvscope record --session NEW.kvscope -- python -m "
              "vllm.entrypoints.openai.api_server ...` and open it here.",
    None: "Follow a running server with `kvscope attach http://HOST:PORT --session FILE`, or "
          "record one with `kvscope record --session FILE -- COMMAND`, and open it here.",
}

src = state.current_source()
st.title(f"Live · {escape_markdown(src.label)}" if src is not None else "Live")
if src is None:
    st.info("No session selected.")
    st.stop()
c = st.columns([2, 1, 1])
window_min = c[0].slider("Show the last (minutes)", 0.5, 60.0, 5.0, step=0.5, key="live_window_min")
refresh_s = c[1].selectbox("Refresh every (s)", [1, 2, 5, 10], index=1, key="live_refresh_s")
following = c[2].toggle("Follow", value=True, key="live_follow", help="pause to inspect the charts")


def _ago(age_s: float | None) -> str:
    """A short "how long ago" for the metric card."""
    if age_s is None:
        return units.NOT_MEASURED
    if age_s < 60:
        return f"{age_s:.0f} s ago"
    if age_s < 3600:
        return f"{age_s / 60:.0f} min ago"
    if age_s < 86400:
        return f"{age_s / 3600:.1f} h ago"
    return f"{age_s / 86400:.0f} d ago"


def _count(value: Any) -> str:
    return units.NOT_MEASURED if value is None else f"{int(value):,}"


def _latency(lat: dict[str, Any], key: str) -> tuple[str, str | None]:
    """A latency card's value and its help (the histogram bucket that holds it)."""
    value = units.fmt_s(lat.get(key))
    bucket = (lat.get("resolution_s") or {}).get(key)
    if not bucket:
        return value, "measured per request" if lat.get("source") == "requests" else None
    lo, hi = bucket
    where = f"{lo:g}–{hi:g} s" if hi is not None else f"≥ {lo:g} s"
    return value, f"from the server's histogram: in the bucket {where} (no more exact than that)"


@st.cache_data(show_spinner=False, max_entries=8)
def _window(path: str, size: int, mtime: float, window_s: float) -> live.LiveWindow | None:
    """The window's report, findings and forecasts, once per version of the file."""
    return live.live_window(path, window_s)


@st.fragment(run_every=float(refresh_s) if following else None)
def live_panel(source: SessionSource, window_s: float) -> None:
    """Re-read the window of the session and redraw (only this fragment reruns)."""
    try:
        w = _window(*file_signature(source.path), window_s)
        data, view, _ = load_recent(source.path, window_s)
        s = live.status_of(source.path)  # ages move on while the file does not
    except KvscopeError as exc:
        state.cannot_use(source.label, exc)
        return
    if w is None:
        st.info("Nothing recorded yet. " + START_HINT[None])
        return
    rep = w.report
    st.markdown(f"{STATUS_ICON.get(s.state, '')} **{escape_markdown(s.state)}** — "
                f"{escape_markdown(s.detail)}")
    st.caption(f"{escape_markdown(source.path)}: {escape_markdown(s.how)}")
    if s.state in (live.STOPPED, live.FINISHED, live.LOST):
        st.caption(START_HINT.get(s.mode, START_HINT[None]))
    lat = rep["latency_s"]
    m = st.columns(6)
    m[0].metric("Last data", _ago(s.last_data_age_s))
    m[1].metric("Steps in window", _count(rep["steps"]),
                help="scrape intervals (attach)" if s.mode == "attach" else "engine steps")
    m[2].metric("Finished in window", _count(rep["requests_finished"]))
    m[3].metric("Preemptions in window", _count(rep["preemptions"]))
    value, why = _latency(lat, "ttft_p50")
    m[4].metric("TTFT p50", value, help=why)
    value, why = _latency(lat, "e2e_p95")
    m[5].metric("End-to-end p95", value, help=why)
    fine = data.steps.fine
    last_kv = float(fine.sort_values("t_hi_s")["kv_usage_frac_max"].iloc[-1]) if not fine.empty else None
    m = st.columns(6)
    m[0].metric("KV usage (last)", units.fmt_pct(last_kv))
    m[1].metric("KV peak in window", units.fmt_pct(rep["kv_cache"]["peak_usage_frac"]))
    m[2].metric("Prefix hit rate", units.fmt_pct(rep["prefix_cache"]["hit_rate"]))
    value, why = _latency(lat, "ttft_p95")
    m[3].metric("TTFT p95", value, help=why)
    value, why = _latency(lat, "e2e_p50")
    m[4].metric("End-to-end p50", value, help=why)
    m[5].metric("Status", s.state)
    if lat.get("source") == "histogram":
        st.caption("Latencies come from the server's Prometheus histograms: each is interpolated "
                   "inside its bucket (hover a card for the bucket), no more exact than that.")

    found = w.findings + w.forecasts
    st.subheader(f"Findings in this window ({len(found)})")
    if not found:
        st.success("Nothing to flag in this window.", icon=":material/check_circle:")
    if w.forecasts:
        st.caption("Forecasts (FORECAST_*) extrapolate the last minute's trend: their range runs from "
                   "now to when the trend reaches its limit.")
    finding_cards(data, w.forecasts + w.findings, key="live-finding")

    b = fine
    if b.empty:  # three empty panels would only say the same thing three times
        st.info("No engine step in this window: no KV, queue or throughput to draw"
                + (" (GPU memory below)." if not data.gpu_samples.empty else "."), icon=":material/info:")
    else:
        state.show(charts.kv_usage_chart(b, view, data.num_blocks(), height=140), key="live-kv")
        state.show(charts.queue_chart(b, view, height=140), key="live-queue")
        state.show(charts.throughput_chart(b, view, height=140, smooth_s=1.0), key="live-tput")
    gpu = data.gpu_samples
    for dev, g in (gpu.groupby("device_index") if not gpu.empty else ()):
        total = float(g["total_bytes"].max()) if g["total_bytes"].notna().any() else None
        state.show(live_charts.gpu_used_chart(g, view, total, f"GPU {int(dev)} memory in use (NVML)"),
                   key=f"live-gpu-{int(dev)}")
    st.caption(f"Window {w.t0_unix_s - w.start_unix_s:,.1f}–{w.t1_unix_s - w.start_unix_s:,.1f} s "
               f"since session start (the same as `kvscope report --last-s {window_s:g}`) · "
               f"updated {time.strftime('%H:%M:%S')}")


live_panel(src, window_min * 60.0)
