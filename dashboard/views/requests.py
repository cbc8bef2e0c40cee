"""Requests page: every finished request, latency distributions and percentiles, short vs long."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import histogram_latency, sections, state
from dashboard.charts import requests as cr
from dashboard.data import derive
from dashboard.data.kv_whole import forensics_memo, request_preemptions
from dashboard.data.session import SessionData
from profiler.units import escape_markdown

PREEMPTION_COLUMNS = {
    "t_s": st.column_config.NumberColumn("time (s)", format="%.3f"),
    "nth": st.column_config.NumberColumn("#", format="%d"),
    "reason": st.column_config.TextColumn("reason"),
    "computed_tokens": st.column_config.NumberColumn("computed tokens discarded", format="%d"),
    "blocks_freed": st.column_config.NumberColumn("blocks freed", format="%d"),
    "kv_usage_before_frac": st.column_config.NumberColumn("KV usage before", format="percent"),
    "kv_usage_after_frac": st.column_config.NumberColumn("KV usage after", format="percent"),
    "resumed_s": st.column_config.NumberColumn("resumed (s)", format="%.3f"),
    "recomputed_tokens": st.column_config.NumberColumn("tokens prefilled again", format="%d"),
    "recompute_s_est": st.column_config.NumberColumn("recompute (s, est.)", format="%.4f"),
}

def request_preemptions_section(data: SessionData, reqs: pd.DataFrame) -> None:
    """Each preempted request's preemptions (the engine core's record), one request at a time."""
    forensics = forensics_memo(data.path)
    preempted = reqs[reqs["preemptions"].fillna(0) > 0].sort_values("preemptions", ascending=False)
    st.subheader("Preemptions of a request")
    if preempted.empty and not forensics.recorded:
        st.caption("No request of this session was preempted.")
        return
    if not forensics.recorded:
        st.caption("Each preemption was not recorded in this session (vLLM's counts only, "
                   "in the table above).")
        return
    ids = [str(r) for r in forensics.table["request_key"].drop_duplicates()]
    if not ids:
        st.caption("No request of this session was preempted.")
        return
    counts = forensics.table["request_key"].astype(str).value_counts()
    ids.sort(key=lambda r: -int(counts.get(r, 0)))
    rid = st.selectbox(f"{len(ids):,} requests were preempted (most first)", ids,
                       format_func=lambda r: f"{r} ({int(counts.get(r, 0))}×)", key="preempted-req")
    rows = request_preemptions(forensics, rid)
    st.dataframe(rows[[c for c in PREEMPTION_COLUMNS if c in rows]], hide_index=True,
                 width="stretch", column_config=PREEMPTION_COLUMNS)


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Requests · {escape_markdown(data.name)}")
        reqs = state.requests(data)
        if reqs.empty:
            if not histogram_latency.show(data):  # attach: the server's histograms
                st.info("No finished requests in this session.")
            st.stop()

        pct = derive.latency_percentiles(reqs)
        st.subheader("Latency percentiles")
        st.dataframe(pct, hide_index=True, column_config={
            c: st.column_config.NumberColumn(c.replace("_s", " (s)"), format="%.4f")
            for c in ("p50_s", "p95_s", "p99_s")})
        state.csv_download(pct, f"{data.name}-latency-percentiles", "Percentiles CSV")
        sections.latency_splits(state.report(data)[0], data.name)

        cols = st.columns(3)
        for i, (col, name) in enumerate(derive.LATENCY_COLUMNS.items()):
            with cols[i % 3]:
                state.show(cr.latency_histogram(reqs[col], name), key=f"hist-{col}")
        with cols[len(derive.LATENCY_COLUMNS) % 3]:
            state.show(cr.preemptions_per_request_chart(reqs), key="preempt-per-req")

        st.subheader("Short vs long prompts")
        lo, hi = int(reqs["prompt_tokens"].min()), int(reqs["prompt_tokens"].max())
        median = int(reqs["prompt_tokens"].median())
        if hi > lo:
            threshold = st.slider("Long prompt = at least this many tokens", lo + 1, hi, min(max(median, lo + 1), hi),
                                  key="prompt_threshold")
        else:
            threshold = hi + 1
            st.caption(f"Every prompt has {hi} tokens: nothing to split.")
        left, right = st.columns(2)
        with left:
            state.show(cr.short_long_chart(derive.split_by_prompt(reqs, threshold)), key="short-long")
        with right:
            state.show(cr.prompt_scatter(reqs), key="ttft-scatter")

        st.subheader(f"All {len(reqs):,} finished requests")
        st.caption("Click a column header to sort.")
        table = reqs.drop(columns=["t_finished_unix_s"], errors="ignore")
        front = ["request_id", "t_arrival_s", "t_finished_s", "prompt_tokens", "cached_tokens",
                 "generation_tokens", "ttft_s", "e2e_s", "queued_s", "prefill_s", "decode_s", "preemptions",
                 "finish_reason"]
        table = table[[c for c in front if c in table] + [c for c in table if c not in front]]
        st.dataframe(table, hide_index=True, width="stretch", height=420)
        state.csv_download(table, f"{data.name}-requests", "Requests CSV")
        request_preemptions_section(data, reqs)
