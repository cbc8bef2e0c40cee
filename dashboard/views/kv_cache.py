"""KV cache page: usage against capacity, token demand against capacity, preemption episodes."""

from __future__ import annotations

import streamlit as st

from dashboard import sections, state
from dashboard.charts import kv_cache as charts_kv
from dashboard.charts import kv_whole as charts_whole
from dashboard.data import derive
from dashboard.data.kv_whole import occupancy_memo, tiers_memo
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler.units import escape_markdown

BUCKETS = 600


def kv_tier_section(data: SessionData, t0: float, t1: float) -> None:
    """Token occupancy beside block usage, and the split of prefix lookups over the tiers."""
    occ = occupancy_memo(data.path)
    st.subheader("Tokens, not only blocks")
    if occ.empty:
        st.caption("Token occupancy: n/a (recorded by kvscope's engine-core hook; this session "
                   "predates it or was attached).")
    else:
        state.show(charts_whole.occupancy_chart(occ, t0, t1), key="kv-occupancy")
        st.caption("Blocks in use (vLLM's KV usage) against the token slots that actually hold "
                   "tokens: the gap is the unfilled tail block of every running sequence.")
    v = tiers_memo(data.path)
    if len(v.kv_tiers) > 1:
        st.subheader("Tier split")
        state.show(charts_whole.tier_split_chart(v.kv_tiers), key="kv-tier-split")

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"KV cache · {escape_markdown(data.name)}")
        blocks = data.num_blocks()
        block_size = data.block_size_tokens()
        if not blocks or not block_size:
            st.info("No KV cache in this session: the engine never finished start-up (see the findings on Overview).")
            st.stop()
        t0, t1 = state.get_zoom(data)
        view = View(t0, t1, BUCKETS)
        c = st.columns([2, 2, 2, 3])
        unit_col = c[3].container()
        c[0].metric("Capacity (blocks)", f"{blocks:,}", delta=f"{blocks * block_size:,} tokens", delta_color="off")
        c[1].metric("Block size", f"{block_size} tokens")
        unit = unit_col.segmented_control("Show usage in", ["blocks", "tokens"], default="blocks", key="kv_unit") or "blocks"
        st.caption(f"Range {t0:,.2f}–{t1:,.2f} s (the Timeline's zoom; change it there).")

        preempting = state.preempting_steps(data)
        gap_s = float(c[3].select_slider("Merge preemptions closer than (s)", [0.05, 0.25, 1.0, 5.0, 30.0],
                                         value=1.0, key="kv_episode_gap_s"))
        episodes = derive.preemption_episodes(preempting, gap_s)
        in_view = episodes[(episodes["t_end_s"] >= t0) & (episodes["t_start_s"] <= t1)]
        c[2].metric("Preemption episodes", f"{len(episodes):,}",
                    delta=f"{int(episodes['preemptions'].sum()) if len(episodes) else 0:,} preemptions",
                    delta_color="off")

        b = state.buckets(data, view)
        state.show(charts_kv.kv_capacity_chart(b, view, blocks, block_size, unit, in_view), key="kv-cap")
        sections.kv_groups(data, state.report(data)[0], view)

        reqs = state.requests(data)
        demand = derive.kv_demand(reqs, view)
        state.show(charts_kv.kv_demand_chart(demand, view, blocks * block_size, in_view), key="kv-demand")
        st.caption("Demand is estimated from the finished requests: each request holds its prompt "
                   "(less its prefix-cache hits, which share blocks) from arrival and grows by its "
                   "generated tokens until it finishes. Above the capacity line the scheduler must queue "
                   "or preempt.")

        kv_tier_section(data, t0, t1)

        st.subheader("Preemption episodes")
        if episodes.empty:
            st.success("No preemptions in this session.", icon=":material/check_circle:")
        else:
            st.caption(f"Preempting steps less than {gap_s:g} s apart form one episode.")
            st.dataframe(episodes, hide_index=True, width="stretch", column_config={
                "t_start_s": st.column_config.NumberColumn("start (s)", format="%.3f"),
                "t_end_s": st.column_config.NumberColumn("end (s)", format="%.3f"),
                "duration_s": st.column_config.NumberColumn("duration (s)", format="%.3f"),
                "peak_waiting": st.column_config.NumberColumn("peak waiting requests", format="%d"),
            })
            state.csv_download(episodes, f"{data.name}-preemption-episodes", "Episodes CSV")
