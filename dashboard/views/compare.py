"""Compare page: sessions on time-from-first-step, with their key numbers side by side.

Session A is the baseline; "Compare with" takes one or more others. With one other session the
table shows B − A and whether B is better; with several, one column per session.
"""

from __future__ import annotations

import string

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import panels as charts
from dashboard.data import compare
from dashboard.data.steps import View

BUCKETS = 500

st.title("Compare sessions")
srcs = state.sources()
if len(srcs) < 2:
    st.info("Comparing needs at least two sessions: give two or more files to `kvscope ui`.")
    st.stop()
current = state.current_source()
ia = srcs.index(current) if current in srcs else 0
left, right = st.columns([1, 2])
src_a = state.pick_session(left, key="compare_a", label="Session A", default_index=ia)
if src_a is None:
    st.stop()
others = [s for s in srcs if s.path != src_a.path]
labels = [s.label for s in others]
chosen = right.multiselect("Compare with", labels, default=labels[ia % len(labels)],
                           key="compare_with", help="one or more sessions (servers, days)")
picked = [src_a] + [others[labels.index(c)] for c in chosen]
if len(picked) < 2:
    st.info("Pick at least one session to compare with.")
    st.stop()
letters = string.ascii_uppercase
loaded = [(src, state.load_or_error(src)) for src in picked]
if any(data is None for _, data in loaded):
    st.stop()

reports = []
for src, data in loaded:
    with state.session_errors(src.label):
        reports.append(state.report(data)[0])
if len(reports) < len(loaded):
    st.stop()
st.subheader("Key numbers")
if len(loaded) == 2:
    src_b = picked[1]
    deltas = compare.key_number_deltas(reports[0], reports[1])
    st.dataframe(deltas, hide_index=True, width="stretch", height=36 * (len(deltas) + 1) + 4,
                 column_config={
                     "A": st.column_config.NumberColumn(f"A: {src_a.label}", format="%.4g"),
                     "B": st.column_config.NumberColumn(f"B: {src_b.label}", format="%.4g"),
                     "B − A": st.column_config.NumberColumn(format="%+.4g"),
                     "change": st.column_config.NumberColumn(format="percent"),
                 })
    state.csv_download(deltas, f"compare-{src_a.label}-vs-{src_b.label}", "Deltas CSV")
    diff = compare.config_differences(loaded[0][1].engines, loaded[1][1].engines)
    if not diff.empty:
        st.markdown("**Engine settings that differ**")
        st.dataframe(diff, hide_index=True)
        state.csv_download(diff, f"compare-settings-{src_a.label}-vs-{src_b.label}", "Settings CSV")
else:
    names = [f"{letters[i % 26]}: {src.label}" for i, (src, _) in enumerate(loaded)]
    table = compare.key_numbers_table(list(zip(names, reports, strict=True)))
    st.dataframe(table, hide_index=True, width="stretch", height=36 * (len(table) + 1) + 4,
                 column_config={n: st.column_config.NumberColumn(n, format="%.4g") for n in names})
    state.csv_download(table, f"compare-{len(names)}-sessions", "Key numbers CSV")

rolling_s = 1.0
series: dict[str, list[pd.DataFrame]] = {}
for i, (src, data) in enumerate(loaded):
    first, end = data.serving_range()
    f = data.steps.fine
    first_step = float(f["t_lo_s"].min()) if not f.empty else first
    view = View(first_step, max(end, first_step + 1e-3), BUCKETS)
    tag = f"{letters[i % 26]}: {src.label}"
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
            st.info(f"{title}: no data in any of these sessions.")
        else:
            state.show(charts.compare_chart(df, value, title, y_title, fmt), key=f"cmp-{k}")
