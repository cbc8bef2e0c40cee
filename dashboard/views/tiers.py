"""Tiers page: the GPU prefix cache and every KV tier behind it, and block residency."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import kv_whole as charts
from dashboard.data.kv_whole import tiers_memo
from profiler.units import NOT_MEASURED, escape_markdown, fmt

TIER_COLUMNS = {
    "medium": st.column_config.TextColumn("tier"),
    "queries_tokens": st.column_config.NumberColumn("looked up (tokens)", format="%d"),
    "hits_tokens": st.column_config.NumberColumn("hits (tokens)", format="%d"),
    "hit_rate": st.column_config.NumberColumn("hit rate", format="percent"),
    "stored_bytes": st.column_config.NumberColumn("stored (bytes)", format="%d"),
    "loaded_bytes": st.column_config.NumberColumn("loaded (bytes)", format="%d"),
    "store_bytes_per_s": st.column_config.NumberColumn("store bandwidth (B/s)", format="%.3e"),
    "load_bytes_per_s": st.column_config.NumberColumn("load bandwidth (B/s)", format="%.3e"),
    "peak_usage_frac": st.column_config.NumberColumn("peak usage", format="percent"),
}


def tier_table(kv_tiers: list[dict]) -> pd.DataFrame:
    """``kv_tiers`` as a table; values not measured read n/a."""
    df = pd.DataFrame(kv_tiers)
    return df.astype(object).where(df.notna(), NOT_MEASURED)


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Tiers · {escape_markdown(data.name)}")
        v = tiers_memo(data.path)
        st.dataframe(tier_table(v.kv_tiers), hide_index=True, width="stretch",
                     column_config=TIER_COLUMNS)
        st.caption("GPU: vLLM's prefix cache. A tier's lookups are the prompt tokens the GPU cache "
                   "missed; bandwidth is bytes over the transfer time vLLM measured. n/a: not "
                   "reported by this engine or server.")
        if len(v.kv_tiers) == 1:
            st.info("No KV tier behind the GPU in this session (no KV connector: run vLLM with "
                    "--kv-offloading-size or a kv_transfer_config to get one).", icon=":material/info:")
        else:
            state.show(charts.tier_split_chart(v.kv_tiers), key="tier-split")
            for col, title, fmt_ in (("hit_rate", "Hit rate per tier", "%"),
                                     ("load_bytes_per_s", "Loaded into GPU (bytes/s)", "~s"),
                                     ("store_bytes_per_s", "Stored from GPU (bytes/s)", "~s"),
                                     ("usage_frac", "Tier usage", "%")):
                chart = charts.tier_series_chart(v.series, col, title, fmt_)
                if chart is None:
                    st.caption(f"{title}: {NOT_MEASURED} (not reported by this engine).")
                else:
                    state.show(chart, key=f"tier-{col}")
        st.subheader("Block residency: vLLM's numbers vs kvscope's model")
        res = pd.DataFrame(v.residency)
        for col in ("vllm", "kvscope"):
            res[col] = [fmt(x, "{:,.4g}") for x in res[col]]
        st.dataframe(res, hide_index=True, width="stretch")
        st.caption("vLLM's side needs --kv-cache-metrics (kvscope record --kv-cache-metrics); "
                   "kvscope's needs KV events (kvscope record --kv-events, or attach --kv-events) "
                   "and prompt-block hashes.")
