"""Preemptions page: every preemption of the session, sortable, with what it discarded and cost."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.charts import kv_whole as charts
from dashboard.data.kv_whole import forensics_memo
from profiler.units import NOT_MEASURED, escape_markdown, fmt

COLUMNS = {
    "t_s": st.column_config.NumberColumn("time (s)", format="%.3f"),
    "request_key": st.column_config.TextColumn("request"),
    "nth": st.column_config.NumberColumn("its #", format="%d"),
    "reason": st.column_config.TextColumn("reason", help="kvscope's, from the scheduler method that "
                                          "preempted (vLLM records none): kv_cache_full = no free "
                                          "block for a running request's next tokens"),
    "computed_tokens": st.column_config.NumberColumn("computed tokens discarded", format="%d"),
    "prompt_tokens": st.column_config.NumberColumn("prompt tokens", format="%d"),
    "output_tokens": st.column_config.NumberColumn("output tokens so far", format="%d"),
    "blocks_freed": st.column_config.NumberColumn("blocks freed", format="%d"),
    "kv_usage_before_frac": st.column_config.NumberColumn("KV usage before", format="percent"),
    "kv_usage_after_frac": st.column_config.NumberColumn("KV usage after", format="percent"),
    "resumed_s": st.column_config.NumberColumn("resumed (s)", format="%.3f"),
    "hits_tokens": st.column_config.NumberColumn("prefix hits at resume", format="%d"),
    "recomputed_tokens": st.column_config.NumberColumn("tokens prefilled again", format="%d"),
    "recompute_s_est": st.column_config.NumberColumn("recompute (s, est.)", format="%.4f"),
}

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Preemptions · {escape_markdown(data.name)}")
        f = forensics_memo(data.path)
        s = f.summary
        c = st.columns(5)
        c[0].metric("Preemptions", fmt(s["count"], "{:,}"))
        c[1].metric("Requests preempted", fmt(s["requests"], "{:,}"))
        c[2].metric("Tokens prefilled again", fmt(s["recomputed_tokens"], "{:,}"))
        c[3].metric("Recompute (est.)", fmt(s["recompute_s_est"], "{:.3f} s"))
        worst = s["worst_request"]
        most = (f.table["request_key"].astype(str).value_counts() if f.recorded else None)
        if worst is None:
            c[4].metric("Costliest request", NOT_MEASURED)
        elif worst.get("recomputed_tokens") is not None:  # ranked by the tokens prefilled again
            c[4].metric("Costliest request", escape_markdown(worst["request_id"]),
                        delta=f"{worst['preemptions']}× preempted, {worst['recomputed_tokens']:,} tokens again",
                        delta_color="off", delta_arrow="off",
                        help="the request whose preemptions made the engine prefill the most tokens again"
                        + (f"; the most preempted was {escape_markdown(str(most.index[0]))} "
                           f"({int(most.iloc[0])}×)" if most is not None and len(most) else ""))
        elif worst["preemptions"] > 1:  # vLLM's per-request counts only: no cost to rank by
            c[4].metric("Most preempted request", escape_markdown(worst["request_id"]),
                        delta=f"{worst['preemptions']}× preempted", delta_color="off", delta_arrow="off")
        else:
            c[4].metric("Most preempted request", "none twice", delta="each preempted once",
                        delta_color="off", delta_arrow="off")
        rate = f.prefill_tokens_per_s
        st.caption("Recompute seconds are estimated from this session's own prefill rate "
                   + (f"({rate:,.0f} prompt tokens/s while prefilling)." if rate else
                      "(not measurable here: n/a)."))
        if not s["count"]:
            st.success("No preemptions in this session.", icon=":material/check_circle:")
            st.stop()
        if not f.recorded:
            st.info("This session has vLLM's preemption counters only: it was recorded before "
                    "kvscope kept each preemption, or attached from /metrics.", icon=":material/info:")
            st.stop()
        state.show(charts.preemption_scatter(f.table), key="preempt-scatter")
        st.subheader(f"All {len(f.table):,} preemptions")
        st.caption("Click a column header to sort.")
        table = f.table[[c for c in COLUMNS if c in f.table]]
        st.dataframe(table, hide_index=True, width="stretch", height=420, column_config=COLUMNS)
        state.csv_download(table, f"{data.name}-preemptions", "Preemptions CSV")
