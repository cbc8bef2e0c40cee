"""Compare page: two sessions on time-from-first-step, with the deltas of their key numbers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import sections, state
from dashboard.charts import panels as charts
from dashboard.data import compare
from dashboard.data.steps import View

BUCKETS = 500

st.title("Compare two sessions")
srcs = state.sources()
if len(srcs) < 2:
    st.info("Comparing needs at least two sessions: give two files to `kvscope ui`.")
    st.stop()
current = state.current_source()
ia = srcs.index(current) if current in srcs else 0
left, right = st.columns(2)
src_a = state.pick_session(left, key="compare_a", label="Session A", default_index=ia)
src_b = state.pick_session(right, key="compare_b", label="Session B", default_index=(ia + 1) % len(srcs))
if src_a is None or src_b is None:
    st.stop()
data_a = state.load_or_error(src_a)
data_b = state.load_or_error(src_b)
if data_a is None or data_b is None:
    st.stop()
if src_a.path == src_b.path:
    st.warning("A and B are the same session.")

reports = []
for src, data in ((src_a, data_a), (src_b, data_b)):
    with state.session_errors(src.label):
        reports.append(state.report(data)[0])
if len(reports) < 2:
    st.stop()
rep_a, rep_b = reports
st.subheader("Key numbers")
deltas = compare.key_number_deltas(rep_a, rep_b)
st.dataframe(deltas, hide_index=True, width="stretch", height=36 * (len(deltas) + 1) + 4, column_config={
    "A": st.column_config.NumberColumn(f"A: {src_a.label}", format="%.4g"),
    "B": st.column_config.NumberColumn(f"B: {src_b.label}", format="%.4g"),
    "B − A": st.column_config.NumberColumn(format="%+.4g"),
    "change": st.column_config.NumberColumn(format="percent"),
})
state.csv_download(deltas, f"compare-{src_a.label}-vs-{src_b.label}", "Deltas CSV")
diff = compare.config_differences(data_a.engines, data_b.engines)
if not diff.empty:
    st.markdown("**Engine settings that differ**")
    st.dataframe(diff, hide_index=True)
    state.csv_download(diff, f"compare-settings-{src_a.label}-vs-{src_b.label}", "Settings CSV")
sections.compare_serving(rep_a, rep_b, src_a.label, src_b.label)

rolling_s = 1.0
series: dict[str, list[pd.DataFrame]] = {}
for src, data in ((src_a, data_a), (src_b, data_b)):
    first, end = data.serving_range()
    f = data.steps.fine
    first_step = float(f["t_lo_s"].min()) if not f.empty else first
    view = View(first_step, max(end, first_step + 1e-3), BUCKETS)
    tag = f"{'A' if data is data_a else 'B'}: {src.label}"
    for k, v in compare.aligned_series(state.buckets(data, view), view, first_step, tag, rolling_s).items():
        series.setdefault(k, []).append(v)

st.subheader("Side by side (time from each session's first engine step)")
spec = [
    ("kv", "kv_usage_frac", "KV cache usage", "KV usage", "%"),
    ("waiting", "waiting", "Waiting requests", "requests", None),
    ("running", "running", "Running requests", "requests", None),
    ("generation", "per_s", "Generation throughput", "tokens / s", ",.0f"),
    ("hit_rate", "hit_rate_frac", f"Prefix-cache hit rate (rolling {rolling_s:g} s)", "hit rate", "%"),
]
cols = st.columns(2)
for i, (k, value, title, y_title, fmt) in enumerate(spec):
    df = pd.concat(series.get(k, []), ignore_index=True)
    with cols[i % 2]:
        if df.empty:
            st.info(f"{title}: no data in either session.")
        else:
            state.show(charts.compare_chart(df, value, title, y_title, fmt), key=f"cmp-{k}")
