"""Altair chart builders for the KV cache page: usage and demand against capacity, episodes shaded."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import COLORS, TIME_TITLE, time_x
from dashboard.data import derive
from dashboard.data.steps import View


def with_episodes(chart: alt.Chart | alt.LayerChart, episodes: pd.DataFrame,
                  view: View) -> alt.LayerChart:
    """Shade preemption episodes (``t_start_s``..``t_end_s``) behind a chart."""
    if episodes.empty:
        return alt.layer(chart)
    ep = episodes.copy()
    pad = max(view.width_s, (view.t1_s - view.t0_s) / 150)  # a one-step episode stays visible
    ep["x0"] = ep["t_start_s"] - pad / 2
    ep["x1"] = ep["t_end_s"] + pad / 2
    bands = alt.Chart(ep).mark_rect(color=COLORS["preempt"], opacity=0.15, clip=True).encode(
        x=alt.X("x0:Q", title=TIME_TITLE, scale=alt.Scale(domain=[view.t0_s, view.t1_s], nice=False)),
        x2="x1:Q",
        tooltip=[alt.Tooltip("t_start_s:Q", format=".2f", title="episode start (s)"),
                 alt.Tooltip("duration_s:Q", format=".2f", title="duration (s)"),
                 alt.Tooltip("preemptions:Q", title="preemptions")])
    return alt.layer(bands, chart)


def kv_capacity_chart(buckets: pd.DataFrame, view: View, num_blocks: int, block_size: int,
                      unit: str, episodes: pd.DataFrame, height: int = 220) -> alt.LayerChart:
    """KV cache used vs capacity in blocks or tokens, preemption episodes shaded."""
    df = derive.kv_series(buckets)
    per = 1 if unit == "blocks" else block_size
    df = df.assign(used=df["value"] * num_blocks * per)
    cap = num_blocks * per
    line = alt.Chart(df).mark_area(interpolate="step-after", color=COLORS["kv"], opacity=0.5,
                                   line={"color": COLORS["kv"]}).encode(
        x=time_x(view), y=alt.Y("used:Q", title=f"KV {unit} used", scale=alt.Scale(domain=[0, cap * 1.08])))
    rule = alt.Chart(pd.DataFrame({"cap": [cap], "label": [f"capacity {cap:,} {unit}"]})).mark_rule(
        color=COLORS["total"], strokeDash=[5, 3]).encode(y="cap:Q", tooltip=["label:N"])
    return with_episodes(alt.layer(line, rule), episodes, view).properties(
        title=f"KV cache used vs capacity ({unit}); red bands = preemption episodes", height=height)


def kv_demand_chart(demand: pd.DataFrame, view: View, capacity_tokens: int, episodes: pd.DataFrame,
                    height: int = 220) -> alt.LayerChart:
    """Estimated token demand of every request in the system against the KV capacity."""
    df = demand.assign(series="demand (running + waiting)")
    area = alt.Chart(df).mark_area(interpolate="step-after", color=COLORS["waiting"], opacity=0.45,
                                   line={"color": COLORS["waiting"]}).encode(
        x=time_x(view), y=alt.Y("demand_tokens:Q", title="tokens"))
    rule = alt.Chart(pd.DataFrame({"cap": [capacity_tokens],
                                   "label": [f"KV capacity {capacity_tokens:,} tokens"]})).mark_rule(
        color=COLORS["total"], strokeDash=[5, 3], strokeWidth=2).encode(y="cap:Q", tooltip=["label:N"])
    return with_episodes(alt.layer(area, rule), episodes, view).properties(
        title="KV demand vs capacity (estimated: uncached prompt + generated tokens of requests in the system)",
        height=height)
