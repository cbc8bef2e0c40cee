"""Requests page: every finished request over time (swimlanes), latency distributions and
percentiles, preemptions per request, short vs long prompts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import histogram_latency, sections, state
from dashboard.charts import marks as chart_marks
from dashboard.charts import requests as cr
from dashboard.data import derive, tables
from dashboard.data import marks as mk
from dashboard.data.kv_whole import forensics_memo, request_preemptions
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from dashboard.data.swimlanes import prefix_groups, session_spans
from profiler import units
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


def _metrics(cards: list[tuple[str, str, str | None, str | None]]) -> None:
    """The page's key numbers, four to a row: (label, value, delta, help)."""
    for col, (label, value, delta, helptext) in zip(st.columns(4), cards, strict=False):
        col.metric(label, value, delta=delta, delta_color="off", delta_arrow="off", help=helptext)


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
                       format_func=lambda r: f"{r} ({int(counts.get(r, 0))}×)", key=f"preempted-req::{data.path}")
    rows = request_preemptions(forensics, rid)
    st.dataframe(rows[[c for c in PREEMPTION_COLUMNS if c in rows]], hide_index=True,
                 width="stretch", column_config=PREEMPTION_COLUMNS)


def evictions(data_kv: object, start_unix_s: float) -> pd.DataFrame | None:
    """Eviction rate bins from the session's KV events (None without events)."""
    rates = getattr(data_kv, "rates", None)
    if rates is None or rates.empty:
        return None
    ev = rates[rates["evictions_per_s"] > 0]
    return pd.DataFrame({"t_s": ev["t_unix_s"] - start_unix_s, "evictions_per_s": ev["evictions_per_s"]})


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Requests · {escape_markdown(data.name)}")
        reqs = state.requests(data)
        rep, findings = state.report(data)
        pre_steps = rep.get("preemptions")
        finished = len(reqs) if not reqs.empty else rep.get("requests_finished")
        cards: list[tuple[str, str, str | None, str | None]] = []
        if finished:
            cards.append(("Requests finished", f"{int(finished):,}", None, None))
        if pre_steps is not None:
            cards.append(("Preemptions", f"{int(pre_steps):,}", None,
                          "requests preempted, summed over the engine steps (as on Overview and KV cache)"))
        if reqs.empty:  # attach: the server's counters and histograms, no request of its own
            _metrics(cards)
            if not histogram_latency.show(data):
                st.info("No finished requests in this session"
                        + (": the engine never served." if not rep.get("steps") else "."),
                        icon=":material/info:")
            st.stop()

        counted = reqs["preemptions"].dropna()
        if len(counted):
            cards.append(("Requests preempted", f"{int((counted > 0).sum()):,}",
                          f"of {len(counted):,} with a count", None))
        if rep["latency_s"].get("ttft_p95") is not None:
            cards.append(("TTFT p95", units.fmt_s(rep["latency_s"]["ttft_p95"]), None, None))
        _metrics(cards)

        z0, z1 = state.get_zoom(data)
        view = View(z0, z1, 400)
        spans = session_spans(data, reqs, view.t0_s, view.t1_s)
        if spans.empty:  # the chart carries the title otherwise
            st.subheader("Requests over time")
            st.info("No finished request overlaps the range shown (change the zoom on the Timeline).")
        else:
            kv = state.kv_events(data) if data.steps.total_steps else None
            marks = mk.session_marks(data, findings, state.get_focus(data))
            state.show(chart_marks.with_marks(cr.swimlane_chart(spans, view, evictions(kv, data.start_unix_s)),
                                              marks, view), key="swimlanes")
            hidden = spans.attrs.get("hidden", 0)
            pre = spans[spans["phase"] == "preempted"]
            if not pre.empty:
                unended = int(pre["t_end_s"].isna().sum())
                how = (f"; the {len(pre):,} preemptions of these requests in black, from the preemption "
                       "to vLLM's lookup of the request to resume it"
                       + (f" ({unended:,} with no resume recorded: a black tick)" if unended else ""))
            elif (reqs["preemptions"].fillna(0) > 0).any():
                how = ("; when each preemption happened was not recorded by this session, so a red dot "
                       "ends the lane of a preempted request")
            elif pre_steps:
                how = (f"; the session's {int(pre_steps):,} preemptions are not drawn: it recorded neither "
                       "when each happened nor which request it hit (only vLLM's per-step count)")
            else:
                how = ""
            st.caption(f"Range {z0:,.2f}–{z1:,.2f} s (the Timeline's zoom). Spans are vLLM's per-request "
                       "queue, prefill and decode times laid end to end from arrival" + how
                       + (f". {hidden:,} later requests in the range are not drawn." if hidden else "."))

        st.subheader("Latency percentiles")
        pct = derive.latency_percentiles(reqs)
        st.table(tables.shown(pct, {c: units.fmt_s for c in ("p50_s", "p95_s", "p99_s")}).rename(columns={
            "p50_s": "p50", "p95_s": "p95", "p99_s": "p99", "n": "requests"}), hide_index=True)
        state.csv_download(pct, f"{data.name}-latency-percentiles", "Percentiles CSV")
        sections.latency_splits(rep, data.name)

        measured = [col for col in derive.LATENCY_COLUMNS if reqs[col].notna().any()]
        cols = st.columns(3)
        for i, col in enumerate(measured):
            with cols[i % 3]:
                state.show(cr.latency_histogram(reqs[col], derive.LATENCY_COLUMNS[col]), key=f"hist-{col}")
        with cols[len(measured) % 3]:
            if len(counted):
                state.show(cr.preemptions_per_request_chart(reqs), key="preempt-per-req")
                if len(counted) < len(reqs):
                    st.caption(f"{len(reqs) - len(counted):,} requests have no count (not reported).")
            else:
                per = (f"{int(pre_steps):,} preemptions over the engine steps, "
                       f"{pre_steps / len(reqs):.2f} per finished request" if pre_steps is not None
                       else "no preemption count either")
                st.info(f"Preemptions per request: not measured (this vLLM {rep['session']['vllm_version'] or ''} "
                        f"does not report per-request counts); {per}.", icon=":material/info:")
        missing = [derive.LATENCY_COLUMNS[c] for c in derive.LATENCY_COLUMNS if c not in measured]
        if missing:
            st.caption("Not reported for these requests: " + ", ".join(missing) + ".")

        st.subheader("Short vs long prompts")
        lo, hi = int(reqs["prompt_tokens"].min()), int(reqs["prompt_tokens"].max())
        median = int(reqs["prompt_tokens"].median())
        if hi > lo:
            threshold = st.slider("Long prompt = at least this many tokens", lo + 1, hi, min(max(median, lo + 1), hi),
                                  key=f"prompt_threshold::{data.path}")
        else:
            threshold = hi + 1
            st.caption(f"Every prompt has {hi} tokens: nothing to split.")
        left, right = st.columns(2)
        with left:
            state.show(cr.short_long_chart(derive.split_by_prompt(reqs, threshold)), key="short-long")
        with right:
            if reqs["ttft_s"].notna().any():
                with data.open() as session:
                    groups = prefix_groups(session.table("prompt_blocks"))
                state.show(cr.prompt_scatter(reqs, groups=groups), key="ttft-scatter")
            else:
                st.info("TTFT vs prompt length: TTFT not measured for these requests.")

        st.subheader(f"All {len(reqs):,} finished requests")
        table = reqs.drop(columns=["t_finished_unix_s"], errors="ignore")
        front = ["request_id", "t_arrival_s", "t_finished_s", "prompt_tokens", "cached_tokens",
                 "generation_tokens", "ttft_s", "e2e_s", "queued_s", "prefill_s", "decode_s", "preemptions",
                 "finish_reason"]
        table = table[[c for c in front if c in table] + [c for c in table if c not in front]]
        view_table = tables.shown(table)
        gone = view_table.attrs.get("not_measured") or []
        st.caption("Click a column header to sort."
                   + (f" Not reported for any request (left out): {', '.join(gone)}." if gone else ""))
        st.dataframe(view_table, hide_index=True, width="stretch", height=420)
        state.csv_download(table, f"{data.name}-requests", "Requests CSV")
        request_preemptions_section(data, reqs)
