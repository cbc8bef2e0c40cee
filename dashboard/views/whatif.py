"""What if page: predicted prefix-cache hit rate at other KV cache sizes for the chosen session."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts.kv_whole import block_size_chart
from dashboard.charts.whatif import whatif_chart
from dashboard.data import tables
from dashboard.data.kv_whole import block_sizes_memo
from dashboard.data.session import SessionData
from profiler import units
from profiler.analysis.whatif import predictions
from profiler.units import escape_markdown


def _default_sizes(actual: int | None) -> list[int]:
    n = actual or 16
    return sorted({max(n // 2, 1), n, n * 2, n * 4})


def block_size_section(data: SessionData, block_size: int | None) -> None:
    """The same session at other block sizes (same KV memory), beside the cache-size curve."""
    points = block_sizes_memo(data.path)
    if isinstance(points, str):
        st.info(f"No block-size what-if: {escape_markdown(points)}", icon=":material/info:")
        return
    st.altair_chart(block_size_chart(points, block_size), width="stretch")
    st.caption("Each block size replayed from the prompts' 16-token chunk hashes with the "
               "session's KV memory: smaller blocks catch shorter shared prefixes.")


def render(data: SessionData) -> None:
    """Draw the page for ``data``."""
    st.header("What-if: prefix-cache hit rate vs KV cache size")
    try:
        w = state.whatif(data)
    except ValueError as exc:
        st.info(f"No what-if for this session: {escape_markdown(exc)}")
        return
    a, c = w.actual, w.curve
    cols = st.columns(4)
    cols[0].metric("KV cache", f"{a.num_blocks} blocks" if a.num_blocks else "n/a")
    cols[1].metric("measured hit rate", f"{a.hit_rate:.1%}" if a.hit_rate is not None else "n/a")
    model = c.hit_rate(a.num_blocks) if a.num_blocks else None
    cols[2].metric("model at this size", f"{model:.1%}" if model is not None else "n/a")
    cols[3].metric("unbounded cache", f"{c.max_hit_rate:.1%}" if c.max_hit_rate is not None else "n/a")
    default_top = max(int(max(c.blocks_for(1.0) or 2, a.num_blocks or 2) * 1.5), 8)
    top = st.slider("largest cache size shown (blocks)", 4, max(default_top * 4, 64), default_top)
    left, right = st.columns([3, 2])
    left.altair_chart(whatif_chart(w, top), width="stretch")
    with right:
        block_size_section(data, c.block_size)
    if w.request_count is not None:
        how = ("One LRU stack-distance pass over the session's prompt-block hashes "
               f"({w.request_count} requests, {w.access_count} block accesses).")
    else:
        how = ("Estimated from KV events (re-stores of evicted blocks; events show misses only), "
               "so only sizes from the session's up are predicted.")
    st.caption(how + " Red: the hit rate vLLM measured; blue: the model at the same size; "
               "green: every reuse hits.")
    text = st.text_input("predict at sizes (blocks, space separated)",
                         " ".join(str(n) for n in _default_sizes(a.num_blocks)), key="whatif-sizes")
    try:
        sizes = [int(t) for t in text.split() if int(t) > 0]
    except ValueError:
        st.error("sizes must be whole numbers of blocks")
        return
    if sizes:
        obj = predictions(w, sizes)
        # a size the model cannot predict (below the session's, from KV events) reads n/a
        st.dataframe(tables.shown(pd.DataFrame(obj["predictions"]), {"hit_rate": units.fmt_pct},
                                  keep=("hit_rate",)), hide_index=True)
        if obj["blocks_for_90pct_of_max"]:
            st.write(f"90% of the unbounded-cache hits need **{obj['blocks_for_90pct_of_max']} blocks** "
                     f"({obj['blocks_for_90pct_of_max'] * c.block_size:,} tokens).")


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        render(data)
