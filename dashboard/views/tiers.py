"""Tiers page: the GPU prefix cache and every KV tier behind it, and block residency."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import kv_whole as charts
from dashboard.data.kv_whole import tiers_memo
from profiler.units import NOT_MEASURED, escape_markdown, fmt, fmt_bytes, fmt_pct

LABELS = {"medium": "tier", "queries_tokens": "looked up (tokens)", "hits_tokens": "hits (tokens)",
          "hit_rate": "hit rate", "stored_bytes": "stored", "loaded_bytes": "loaded",
          "store_bytes_per_s": "store bandwidth", "load_bytes_per_s": "load bandwidth",
          "peak_usage_frac": "peak usage"}


def tier_table(kv_tiers: list[dict]) -> pd.DataFrame:
    """``kv_tiers`` as display text, columns keyed as in the report; not measured reads n/a."""
    def cell(key: str, v: object) -> str:
        if key == "medium":
            return str(v)
        if key in ("hit_rate", "peak_usage_frac"):
            return fmt_pct(v)  # type: ignore[arg-type]
        if key.endswith("_per_s"):
            return f"{fmt_bytes(v)}/s" if v is not None else NOT_MEASURED  # type: ignore[arg-type]
        if key.endswith("_bytes"):
            return fmt_bytes(v)  # type: ignore[arg-type]
        return fmt(v, "{:,}")

    return pd.DataFrame([{k: cell(k, t[k]) for k in LABELS} for t in kv_tiers])


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Tiers · {escape_markdown(data.name)}")
        v = tiers_memo(data.path)
        st.dataframe(tier_table(v.kv_tiers), hide_index=True, width="stretch",
                     column_config={k: st.column_config.TextColumn(label)
                                    for k, label in LABELS.items()})
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
