"""Requests page: every finished request, latency distributions and percentiles, short vs long."""

from __future__ import annotations

import streamlit as st

from dashboard import histogram_latency, state
from dashboard.charts import requests as cr
from dashboard.data import derive
from profiler.units import escape_markdown

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
