"""The Requests page's section for sessions without per-request rows (attach): latency from the
server's histograms, each percentile with the bucket that holds it."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import latency as charts
from dashboard.data import latency as data_latency
from dashboard.data.session import SessionData, file_signature
from profiler.analysis.latency import METRICS


@st.cache_data(show_spinner=False, max_entries=16)
def _table(path: str, size: int, mtime: float) -> pd.DataFrame:
    return data_latency.percentile_table(path)


@st.cache_data(show_spinner=False, max_entries=64)
def _buckets(path: str, size: int, mtime: float, metric: str) -> pd.DataFrame:
    return data_latency.bucket_counts(path, metric)


@st.cache_data(show_spinner=False, max_entries=64)
def _over_time(path: str, size: int, mtime: float, metric: str, start: float,
               duration: float) -> pd.DataFrame:
    return data_latency.percentiles_over_time(path, metric, start, duration)


def show(data: SessionData) -> bool:
    """Draw the histogram latency of ``data``; False when the session has none."""
    sig = file_signature(data.path)
    table = _table(*sig)
    if table.empty:
        return False
    rep, _ = state.report(data)
    st.caption(f"{rep['requests_finished'] or 0:,} requests finished while attached. This session "
               "has no per-request rows (attach reads /metrics): latencies come from the server's "
               "Prometheus histograms, so each percentile is interpolated inside its bucket and is "
               "no more exact than that bucket.")
    st.subheader("Latency percentiles (server histograms)")
    st.dataframe(table, hide_index=True, column_config={
        c: st.column_config.NumberColumn(c.replace("_s", " (s)"), format="%.4f")
        for c in ("p50_s", "p95_s", "p99_s")})
    state.csv_download(table, f"{data.name}-latency-percentiles", "Percentiles CSV")
    names = {METRICS[m]: m for m in METRICS}
    shown = [n for n in table["latency"] if n in names]
    pick = st.selectbox("Latency over time", shown, key="hist_latency_metric")
    metric = names[pick]
    state.show(charts.percentiles_chart(_over_time(*sig, metric, data.start_unix_s, data.duration_s),
                                        pick), key=f"hist-time-{metric}")
    cols = st.columns(3)
    for i, name in enumerate(shown):
        row = table[table["latency"] == name].iloc[0]
        sub = " · ".join(f"{q} {row[f'{q}_s']:.4g} s ({row[f'{q} bucket']})" for q in ("p50", "p95")
                         if f"{q}_s" in row)
        with cols[i % 3]:
            state.show(charts.bucket_chart(_buckets(*sig, names[name]), name, sub),
                       key=f"hist-buckets-{names[name]}")
    return True
