"""KV cache page: what the cache held, usage against capacity, token demand against capacity,
preemption episodes; engine start, OOMs and finding ranges marked."""

from __future__ import annotations

import streamlit as st

from dashboard import sections, state
from dashboard.charts import kv_cache as charts_kv
from dashboard.charts import kv_whole as charts_whole
from dashboard.charts import marks as chart_marks
from dashboard.data import derive, tables
from dashboard.data import marks as mk
from dashboard.data.kv_whole import forensics_memo, occupancy_memo, preemption_times, tiers_memo
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler import units
from profiler.units import escape_markdown

BUCKETS = 600


def kv_tier_section(data: SessionData, t0: float, t1: float) -> None:
    """Token occupancy beside block usage, and the split of prefix lookups over the tiers."""
    occ = occupancy_memo(data.path)
    st.subheader("Tokens, not only blocks")
    if occ.empty:
        groups = len(state.report(data)[0]["kv_cache"].get("groups") or [])
        why = (f"measured for a KV cache of one group; this one has {groups}" if groups > 1 else
               "recorded by kvscope's engine-core hook; this session predates it or was attached")
        st.caption(f"Token occupancy: n/a ({why}).")
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
        rep, findings = state.report(data)
        blocks = data.num_blocks()
        block_size = data.block_size_tokens()
        if not blocks or not block_size:
            if data.engines.empty:
                short = rep["memory"].get("kv_cache_bytes")
                why = ("the engine never finished start-up" + (
                    f": start-up was {units.fmt_gib(-short)} short of any KV cache memory"
                    if short is not None and short < 0 else "") if "oom" in rep["events"] or "error" in rep["events"]
                    else "no vLLM engine ran in this session")
            else:
                why = "the engine did not report its cache size"
            st.info(f"No KV cache to show: {why}.", icon=":material/info:")
            st.stop()
        t0, t1 = state.get_zoom(data)
        view = View(t0, t1, BUCKETS)
        kv = rep["kv_cache"]
        c = st.columns([2, 2, 2, 3])
        c[0].metric("Capacity (blocks)", f"{blocks:,}", delta=f"{blocks * block_size:,} tokens ({block_size} each)",
                    delta_color="off", delta_arrow="off")
        held = kv.get("size_bytes")
        c[1].metric("KV cache held", units.fmt_bytes(held),
                    delta=f"{units.fmt_bytes(kv['bytes_per_block'])} per block" if held is not None else
                    "bytes per block not recorded", delta_color="off", delta_arrow="off",
                    help="blocks × bytes per block (one worker); start-up's own measurement is on Memory")
        preempting = state.preempting_steps(data)
        pre = rep.get("preemptions")
        c[2].metric("Preemptions", units.NOT_MEASURED if pre is None else f"{int(pre):,}",
                    help="requests preempted, summed over the engine steps (as on Overview and Requests)")
        unit = c[3].segmented_control("Show usage in", ["blocks", "tokens"], default="blocks", key="kv_unit") or "blocks"
        room = rep["memory"].get("kv_cache_bytes")
        if held is not None and room is not None and room > held * 1.02:
            st.caption(f"Start-up measured room for {units.fmt_gib(room)} of KV; the cache held "
                       f"{units.fmt_bytes(held)} ({blocks:,} blocks, num_gpu_blocks_override).")
        if not data.steps.total_steps:
            st.info("No engine step completed in this session: no KV usage to show.", icon=":material/info:")
            st.stop()
        st.caption(f"Range {t0:,.2f}–{t1:,.2f} s (the Timeline's zoom; change it there). "
                   + chart_marks.LEGEND_TEXT + " Red bands: preemption episodes.")

        gap_s = float(c[3].select_slider("Merge preemptions closer than (s)", [0.05, 0.25, 1.0, 5.0, 30.0],
                                         value=1.0, key="kv_episode_gap_s"))
        forensics = forensics_memo(data.path)
        episodes = derive.preemption_episodes(preemption_times(forensics, preempting), gap_s)
        if forensics.recorded:  # one row per preemption: "steps" would repeat "preemptions"
            episodes = episodes.drop(columns=["steps"])
        in_view = episodes[(episodes["t_end_s"] >= t0) & (episodes["t_start_s"] <= t1)]
        marks = mk.session_marks(data, findings, state.get_focus(data))

        b = state.buckets(data, view)
        state.show(chart_marks.with_marks(charts_kv.kv_capacity_chart(b, view, blocks, block_size, unit, in_view),
                                          marks, view), key="kv-cap")
        sections.kv_groups(data, rep, view)

        reqs = state.requests(data)
        if reqs.empty:
            st.caption("KV demand: n/a (" + (
                f"{rep['requests_finished']:,} requests finished, but this session has no per-request "
                "rows to estimate it from: attach reads the server's /metrics)" if rep.get("requests_finished")
                else "no finished requests to estimate it from)") + ".")
        else:
            demand = derive.kv_demand(reqs, view)
            state.show(chart_marks.with_marks(charts_kv.kv_demand_chart(demand, view, blocks * block_size, in_view),
                                              marks, view), key="kv-demand")
            st.caption("Demand is estimated from the finished requests: each request holds its prompt "
                       "(less its prefix-cache hits, which share blocks) from arrival and grows by its "
                       "generated tokens until it finishes. Above the capacity line the scheduler must queue "
                       "or preempt.")

        kv_tier_section(data, t0, t1)

        st.subheader("Preemption episodes")
        if episodes.empty:
            st.success("No preemptions in this session.", icon=":material/check_circle:")
        else:
            n_ep, n_pre = len(episodes), int(episodes["preemptions"].sum())
            st.caption(f"{n_ep:,} episode{'s' if n_ep != 1 else ''} of {n_pre:,} preemption{'s' if n_pre != 1 else ''}: "
                       + (f"preemptions less than {gap_s:g} s apart (the engine core's times) form one episode."
                          if forensics.recorded else
                          f"preempting steps less than {gap_s:g} s apart form one episode (vLLM's step "
                          "counters: a preemption counts when the request next returns output)."))
            st.dataframe(tables.shown(episodes), hide_index=True, width="stretch", column_config={
                "t_start_s": st.column_config.NumberColumn("start (s)", format="%.3f"),
                "t_end_s": st.column_config.NumberColumn("end (s)", format="%.3f"),
                "duration_s": st.column_config.NumberColumn("duration (s)", format="%.3f"),
                "peak_waiting": st.column_config.NumberColumn("peak waiting requests", format="%d"),
            })
            state.csv_download(episodes, f"{data.name}-preemption-episodes", "Episodes CSV")
