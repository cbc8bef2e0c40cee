"""Dashboard page: predicted prefix-cache hit rate at other KV cache sizes for the chosen session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.whatif_chart import whatif_chart
from profiler.reader import open_session
from profiler.schema import SessionFormatError
from profiler.whatif import WhatIf, analyse, predictions


@st.cache_resource(max_entries=8, show_spinner="replaying the block-hash sequence…")
def _analyse(path: str, size_bytes: int, mtime: float) -> WhatIf:
    """One replay per session file version (size and mtime are part of the cache key)."""
    session = open_session(path)
    try:
        return analyse(session)
    finally:
        session.close()


def _signature(path: Path) -> tuple[str, int, float]:
    size, mtime = 0, 0.0
    for suffix in ("", "-wal"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            size += p.stat().st_size
            mtime = max(mtime, p.stat().st_mtime)
    return str(path.resolve()), size, mtime


def render() -> None:
    """Draw the page."""
    st.header("What-if: prefix-cache hit rate vs KV cache size")
    path = st.session_state.get("session_path")
    if not path:
        st.info("Choose a session first.")
        return
    try:
        w = _analyse(*_signature(Path(path)))
    except (ValueError, SessionFormatError) as exc:
        st.warning(f"No what-if for this session: {exc}")
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
    st.altair_chart(whatif_chart(w, top), width="stretch")
    if w.trace is not None:
        how = ("One LRU stack-distance pass over the session's prompt-block hashes "
               f"({len(w.trace.requests)} requests, {w.trace.accesses} block accesses).")
    else:
        how = ("Estimated from KV events (re-stores of evicted blocks; events show misses only), "
               "so only sizes from the session's up are predicted.")
    st.caption(how + " Red: the hit rate vLLM measured; blue: the model at the same size; "
               "green: every reuse hits.")
    text = st.text_input("predict at sizes (blocks, space separated)",
                         " ".join(str(n) for n in _default_sizes(a.num_blocks)))
    try:
        sizes = [int(t) for t in text.split() if int(t) > 0]
    except ValueError:
        st.error("sizes must be whole numbers of blocks")
        return
    if sizes:
        obj = predictions(w, sizes)
        st.dataframe(pd.DataFrame(obj["predictions"]).style.format({"hit_rate": "{:.1%}"}),
                     hide_index=True)
        if obj["blocks_for_90pct_of_max"]:
            st.write(f"90% of the unbounded-cache hits need **{obj['blocks_for_90pct_of_max']} blocks** "
                     f"({obj['blocks_for_90pct_of_max'] * c.block_size:,} tokens).")


def _default_sizes(actual: int | None) -> list[int]:
    n = actual or 16
    return sorted({max(n // 2, 1), n, n * 2, n * 4})


if __name__ == "__main__":
    render()
