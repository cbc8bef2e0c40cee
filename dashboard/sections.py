"""Page sections for the configurations users run (issue 14): latency splits and cost, KV-cache
groups, speculative decoding, and a client-side benchmark beside a vLLM session.

Each function draws into the current Streamlit container from the session's report (the same
numbers ``kvscope report --json`` prints); pages call them with one line.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import configs as charts
from dashboard.data import configs as tables
from dashboard.data.session import SessionData, file_signature, load_session_memo
from dashboard.data.steps import View
from dashboard.data.tables import shown
from profiler.analysis.kv_groups import group_usage
from profiler.analysis.spec_decode import mean_accepted_length, position_rates
from profiler.units import NOT_MEASURED, escape_markdown, fmt, fmt_bytes, fmt_pct, fmt_s


def _show(value: Any, unit: str) -> str:
    """One cell as text in its unit (``n/a`` when not measured): tables mixing units stay text."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return NOT_MEASURED
    if unit == "s":
        return fmt_s(value)
    if unit == "frac":
        return fmt_pct(value)
    if unit == "bytes":
        return "0 bytes" if value == 0 else fmt_bytes(value)
    if unit == "count":
        return f"{int(value):,}"
    if unit == "small":
        return f"{value:,.4g}"
    return f"{value:,.1f}"


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """A table whose rows each have their own ``unit`` as shown text (the ``unit`` column goes)."""
    out = df.copy()
    for col in [c for c in out if c not in ("metric", "unit")]:
        out[col] = [_signed(v, u) if col == "delta" else _show(v, u)
                    for v, u in zip(out[col], out["unit"], strict=True)]
    return out.drop(columns="unit")


def _signed(value: Any, unit: str) -> str:
    if value is None or pd.isna(value):
        return NOT_MEASURED
    return ("+" if value >= 0 else "−") + _show(abs(value), unit)




def spec_decode_summary(rep: dict[str, Any]) -> None:
    """Overview: method, acceptance rate, mean accepted length, drafter weights, per position."""
    sd = rep.get("spec_decode")
    if not sd:
        return
    st.subheader("Speculative decoding")
    c = st.columns(5)
    c[0].metric("Method", str(sd.get("method") or NOT_MEASURED))
    c[1].metric("Acceptance rate", fmt_pct(sd.get("acceptance_rate")),
                help=f"{sd.get('accepted_tokens')} of {sd.get('draft_tokens')} draft tokens accepted")
    c[2].metric("Mean accepted length", fmt(mean_accepted_length(sd), "{:.2f}"),
                help="1 + accepted tokens per draft: tokens each verification step yields")
    c[3].metric("Drafts", f"{sd.get('drafts') or 0:,}")
    drafter = (rep.get("memory") or {}).get("drafter_weights_bytes")
    c[4].metric("Drafter weights", "none" if drafter == 0 else fmt_bytes(drafter),
                help="the drafter's own parameters (not shared with the target model); n-gram "
                     "drafters have none")
    left, right = st.columns(2)
    rates = position_rates(sd)
    if rates and any(r > 0 for r in rates):
        with left:
            state.show(charts.acceptance_by_position_chart(rates), key="spec-positions")
    elif rates:  # all zero: a chart of empty bars would look like a drawing failure
        left.caption(f"Acceptance per draft position: the target model accepted no drafted token at "
                     f"any of the {len(rates)} positions (0% each).")
    by_len = rep.get("spec_decode_by_prompt_length")
    with right:
        if not by_len:
            st.caption("Short vs long prompts: every prompt has the same length, nothing to split.")
            return
        st.markdown(f"**Short vs long prompts** (split at {by_len['split_tokens']:,} prompt tokens)")
        st.table(pd.DataFrame([{
            "prompts": name, "steps": f"{b['steps']:,}", "drafts": f"{b['drafts']:,}",
            "acceptance rate": fmt_pct(b["acceptance_rate"]),
            "mean accepted length": fmt(b["mean_accepted_length"], "{:.2f}"),
        } for name, b in (("short", by_len["short"]), ("long", by_len["long"]))]), hide_index=True)
        st.caption(f"Each step counts for the prompts alone in flight then; "
                   f"{by_len['mixed_steps']:,} steps had both and count for neither.")


def latency_splits(rep: dict[str, Any], name: str) -> None:
    """Requests page, under the latency percentiles: decode time per token (inter-token latency),
    then TTFT, end-to-end, prefill and decode per token for short and long prompts (split at the
    report's median prompt length)."""
    lat = rep.get("latency_s") or {}
    st.subheader("Decode per token and prompt length")
    t = tables.latency_table(lat)
    itl = t[t["metric"] == "decode per token (ITL)"]
    st.table(tables_shown(itl), hide_index=True)
    st.caption("Decode per token: a request's decode time over its generated tokens after the first "
               "(inter-token latency); percentiles over requests. Prefill above is vLLM's own "
               "scheduled → first token time (queueing excluded).")
    by_len = tables.prompt_length_table(lat)
    if by_len.empty:
        st.caption("By prompt length: every prompt has the same length, nothing to split.")
        return
    split = lat["by_prompt_length"]["split_tokens"]
    st.markdown(f"**By prompt length** (short: fewer than {split:,} prompt tokens, the median)")
    st.table(tables_shown(by_len), hide_index=True)
    state.csv_download(by_len, f"{name}-latency-by-prompt-length", "By prompt length CSV")


def tables_shown(df: pd.DataFrame) -> pd.DataFrame:
    """A latency table (``p50_s``/``p95_s``/``p99_s``, maybe ``requests``) as shown text."""
    return shown(df, {"p50_s": fmt_s, "p95_s": fmt_s, "p99_s": fmt_s},
                 keep=("p50_s", "p95_s", "p99_s")).rename(
        columns={"p50_s": "p50", "p95_s": "p95", "p99_s": "p99"})


@st.cache_data(show_spinner=False, max_entries=16)
def _group_usage(path: str, size: int, mtime: float) -> pd.DataFrame:
    data = load_session_memo(path)
    with data.open() as session:
        return group_usage(session, data.start_unix_s)


def kv_groups(data: SessionData, rep: dict[str, Any], view: View) -> None:
    """KV cache page: each KV-cache group (kind, layers, block size, window, peak blocks held) and,
    for multi-group models, the blocks each held over time."""
    groups = (rep.get("kv_cache") or {}).get("groups") or []
    if not groups:
        return
    st.subheader(f"KV-cache groups ({len(groups)})")
    if len(groups) == 1:
        st.caption("One group: every layer shares the block size above; its usage is the engine's.")
    def count(v: Any) -> str:
        return NOT_MEASURED if v is None else f"{int(v):,}"

    df = pd.DataFrame([{
        "group": str(g["index"]), "kind": g["kind"] + (" (draft)" if g.get("is_draft") else ""),
        "layers": count(g["layers"]), "block size (tokens)": count(g["block_size"]),
        "sliding window (tokens)": ("none" if g.get("sliding_window_tokens") is None
                                    else count(g["sliding_window_tokens"])),
        "page per layer": fmt_bytes(g.get("page_size_bytes")), "pool blocks": count(g["num_blocks"]),
        "peak blocks held": count(g.get("peak_blocks_used")),
        "peak share of pool": fmt_pct(g.get("peak_usage_frac")),
        "mean blocks held": fmt(g.get("mean_blocks_used"), "{:,.1f}"),
    } for g in groups])
    st.table(df, hide_index=True)
    pool = groups[0].get("num_blocks")
    if pool:
        st.caption(f"Peak share of pool: of the {int(pool) - 1:,} usable blocks (vLLM keeps one of the "
                   f"{int(pool):,} for itself; its own KV usage has the same denominator).")
    if len(groups) < 2:
        return
    usage = _group_usage(*file_signature(data.path))
    if usage.empty:
        st.info("Blocks per group: not sampled in this session.")
        return
    kinds = {g["index"]: f"{g['index']} {g['kind']}" for g in groups}
    usage = usage.assign(group=usage["group_index"].map(lambda i: kinds.get(int(i), str(i))))
    usage = usage[(usage["t_s"] >= view.t0_s) & (usage["t_s"] <= view.t1_s)]
    if usage.empty:
        st.info("Blocks per group: no sample in this range.")
        return
    state.show(charts.group_usage_chart(usage, view, groups[0].get("num_blocks")), key="kv-groups")
    st.caption("Sampled by the engine core (at most every 250 ms). A sliding-window group frees the "
               "blocks its window left; full attention keeps every block of a request.")


def compare_serving(rep_a: dict[str, Any], rep_b: dict[str, Any], label_a: str, label_b: str) -> None:
    """Compare page: latency tails, throughput and cost of both sessions (a client-side benchmark
    import included), and what speculative decoding changed when one of them speculated."""
    st.subheader("Serving: tail latency, throughput, cost")
    for label, rep in ((label_a, rep_a), (label_b, rep_b)):
        bench = (rep.get("engine") or {}).get("source") == "bench"  # kvscope import-bench
        if bench:
            st.caption(f"{escape_markdown(label)}: client-side benchmark import (prefill and cache "
                       "not visible to a client)")
    t = tables.serving_table(rep_a, rep_b)
    st.table(_as_text(t).rename(columns={"A": f"A: {label_a}", "B": f"B: {label_b}"}), hide_index=True)
    state.csv_download(t, f"compare-serving-{label_a}-vs-{label_b}", "Serving CSV")
    swing = tables.spec_swing_table(rep_a, rep_b)
    if swing is None:
        return
    rows, side = swing
    st.markdown(f"**Speculative decoding: {side} speculated** (with − without)")
    st.table(_as_text(rows), hide_index=True)
    sd = (rep_a if side == "A" else rep_b)["spec_decode"]
    st.caption(f"method {escape_markdown(sd.get('method'))}; acceptance "
               f"{fmt_pct(sd.get('acceptance_rate'))}, mean accepted length "
               f"{fmt(mean_accepted_length(sd), '{:.2f}')}, decode p50 "
               f"{fmt_s((rep_a if side == 'A' else rep_b)['latency_s'].get('decode_per_token_p50'))} per token")
