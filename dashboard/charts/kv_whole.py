"""Altair charts for the whole KV cache: preemption marks, token occupancy, tiers, block sizes."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import COLORS, PANEL_HEIGHT, Panel, Source, empty_panel, time_x
from dashboard.data.steps import View
from profiler.analysis.tiers import TierSeries
from profiler.analysis.whatif import BlockSizePoint

_MARK_COLUMNS = ["t_s", "request_id", "reason", "computed_tokens", "blocks_freed",
                 "kv_usage_before_frac", "kv_usage_after_frac", "recomputed_tokens", "nth"]


def preemption_marks_panel(table: pd.DataFrame, view: View, height: int = PANEL_HEIGHT) -> Panel:
    """One mark per preemption (the engine core's record): tokens it discarded, what it freed."""
    if table.empty:
        return empty_panel("preemptions not recorded one by one in this session", view, height)
    df = table[(table["t_s"] >= view.t0_s) & (table["t_s"] <= view.t1_s)][_MARK_COLUMNS].copy()
    df["computed_tokens"] = pd.to_numeric(df["computed_tokens"], errors="coerce").fillna(0)
    df["request_id"] = df["request_id"].astype(str)
    df["reason"] = df["reason"].fillna("not recorded").astype(str)
    if df.empty:
        return empty_panel("no preemption in this range", view, height)

    def draw(d: dict[str, Source]) -> alt.Chart:
        return alt.Chart(d["marks"]).mark_point(filled=True, color=COLORS["preempt"], size=45,
                                                clip=True).encode(
            x=time_x(view),
            y=alt.Y("computed_tokens:Q", title="tokens discarded"),
            shape=alt.Shape("reason:N", legend=None),  # legends of a linked view gather at its top
            tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"),
                     alt.Tooltip("request_id:N", title="request"),
                     alt.Tooltip("nth:Q", title="its preemption #"), "reason:N",
                     alt.Tooltip("computed_tokens:Q", title="computed tokens discarded"),
                     alt.Tooltip("blocks_freed:Q", title="blocks freed"),
                     alt.Tooltip("kv_usage_before_frac:Q", format=".1%", title="KV usage before"),
                     alt.Tooltip("kv_usage_after_frac:Q", format=".1%", title="KV usage after"),
                     alt.Tooltip("recomputed_tokens:Q", title="tokens prefilled again")],
        ).properties(title="Each preemption: tokens it discarded (hover for request, reason, "
                           "blocks freed, KV usage before/after)", height=height)

    return Panel({"marks": df}, ("preempt_marks", height), draw)


def preemption_scatter(table: pd.DataFrame, height: int = 260) -> alt.Chart:
    """Preemptions over time: discarded tokens (y), tokens prefilled again (size), reason (color)."""
    df = table.copy()
    df["request_id"] = df["request_key"].astype(str)
    df["reason"] = df["reason"].fillna("not recorded").astype(str)
    df["recomputed_tokens"] = pd.to_numeric(df["recomputed_tokens"], errors="coerce").fillna(0)
    return alt.Chart(df).mark_circle(opacity=0.7).encode(
        x=alt.X("t_s:Q", title="time since session start (s)", scale=alt.Scale(zero=False)),
        y=alt.Y("computed_tokens:Q", title="computed tokens discarded"),
        size=alt.Size("recomputed_tokens:Q", title="prefilled again"),
        color=alt.Color("reason:N", legend=alt.Legend(orient="top")),
        tooltip=["request_id:N", "nth:Q", "reason:N", "computed_tokens:Q", "blocks_freed:Q",
                 alt.Tooltip("kv_usage_before_frac:Q", format=".1%"),
                 alt.Tooltip("kv_usage_after_frac:Q", format=".1%"), "recomputed_tokens:Q",
                 alt.Tooltip("recompute_s_est:Q", format=".4f")],
    ).properties(title="Every preemption", height=height)


def occupancy_chart(df: pd.DataFrame, t0_s: float, t1_s: float, height: int = 220) -> alt.Chart:
    """Block usage vs token occupancy per step in ``t0_s..t1_s`` (the gap: unfilled tail blocks)."""
    df = df[(df["t_s"] >= t0_s) & (df["t_s"] <= t1_s)]
    long = df.melt(id_vars=["t_s"], value_vars=["block_usage_frac", "token_occupancy_frac"],
                   var_name="series", value_name="frac")
    long["series"] = long["series"].map({"block_usage_frac": "blocks in use",
                                         "token_occupancy_frac": "token slots holding tokens"})
    return alt.Chart(long).mark_line(interpolate="step-after", strokeWidth=1.4).encode(
        x=alt.X("t_s:Q", title="time since session start (s)",
                scale=alt.Scale(domain=[t0_s, t1_s], nice=False)),
        y=alt.Y("frac:Q", title="share of the KV cache", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1.05])),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=["blocks in use", "token slots holding tokens"],
                                        range=[COLORS["kv"], COLORS["rolling"]])),
        tooltip=["series:N"],  # a line's tooltip is its first point's: only what the whole line shares
    ).properties(title="Blocks in use vs token slots actually holding tokens", height=height)


def tier_split_chart(kv_tiers: list[dict], height: int = 160) -> alt.Chart:
    """Prompt tokens served by each tier vs recomputed (the tier split of the prefix lookups)."""
    gpu = kv_tiers[0]
    rows = [{"source": t["medium"], "tokens": t["hits_tokens"]} for t in kv_tiers
            if t["hits_tokens"] is not None]
    served = sum(r["tokens"] for r in rows)
    if gpu["queries_tokens"] is not None:
        rows.append({"source": "recomputed (no tier had it)",
                     "tokens": max(gpu["queries_tokens"] - served, 0)})
    df = pd.DataFrame(rows)
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("tokens:Q", title="prompt tokens looked up", stack="zero"),
        color=alt.Color("source:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["source:N", alt.Tooltip("tokens:Q", format=",")],
    ).properties(title="Where looked-up prompt tokens came from", height=height)


def tier_series_chart(series: list[TierSeries], column: str, title: str, fmt: str,
                      height: int = 200) -> alt.Chart | None:
    """One line per tier of ``column`` over time (None when no tier has it)."""
    frames = [s.frame.assign(medium=s.medium) for s in series
              if column in s.frame and s.frame[column].notna().any()]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).dropna(subset=[column])
    base = alt.Chart(df).encode(
        x=alt.X("t_s:Q", title="time since session start (s)"),
        y=alt.Y(f"{column}:Q", title=title, axis=alt.Axis(format=fmt)),
        color=alt.Color("medium:N", title="tier"))
    # the readout on the points: a line's tooltip would be its first point's wherever it is hovered
    points = base.mark_point(filled=True).encode(
        tooltip=["medium:N", alt.Tooltip("t_s:Q", format=".2f"), alt.Tooltip(f"{column}:Q", format=fmt)])
    return alt.layer(base.mark_line(interpolate="step-after"), points).properties(title=title, height=height)


def block_size_chart(points: list[BlockSizePoint], engine_block_size: int | None,
                     height: int = 240) -> alt.Chart:
    """Predicted hit rate per block size at the session's KV memory, and with room for everything."""
    rows = []
    for p in points:
        label = f"{p.block_size}" + (" (session)" if p.block_size == engine_block_size else "")
        rows.append({"block size": label, "order": p.block_size, "series": "at this KV memory",
                     "hit_rate": p.hit_rate})
        rows.append({"block size": label, "order": p.block_size, "series": "unbounded cache",
                     "hit_rate": p.max_hit_rate})
        if p.measured_hit_rate is not None:
            rows.append({"block size": label, "order": p.block_size, "series": "measured",
                         "hit_rate": p.measured_hit_rate})
    df = pd.DataFrame(rows).dropna(subset=["hit_rate"])
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("block size:N", sort=alt.SortField("order"), axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("series:N"),
        y=alt.Y("hit_rate:Q", title="prefix hit rate", axis=alt.Axis(format="%")),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=["measured", "at this KV memory", "unbounded cache"],
                                        range=["#e45756", "#4c78a8", "#54a24b"])),
        tooltip=["block size:N", "series:N", alt.Tooltip("hit_rate:Q", format=".1%")],
    ).properties(title="Prefix hit rate by block size (same KV memory)", height=height)
