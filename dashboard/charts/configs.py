"""Altair charts for the configuration sections: speculative decoding, KV-cache groups."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import COLORS, time_x
from dashboard.data.steps import View


def acceptance_by_position_chart(rates: list[float], height: int = 180) -> alt.Chart:
    """Share of drafts whose token at draft position 1, 2, ... the target model accepted."""
    df = pd.DataFrame({"position": [str(i + 1) for i in range(len(rates))], "rate": rates})
    return alt.Chart(df).mark_bar(color=COLORS["generation"]).encode(
        x=alt.X("position:N", title="draft position", sort=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("rate:Q", title="accepted (share of drafts)", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        tooltip=["position:N", alt.Tooltip("rate:Q", format=".1%", title="accepted")],
    ).properties(title="Acceptance per draft position", height=height)


def group_usage_chart(usage: pd.DataFrame, view: View, num_blocks: int | None,
                      height: int = 220) -> alt.LayerChart:
    """Blocks each KV-cache group held over time (``t_s``, ``group``, ``blocks_used``), with the
    shared pool's usable capacity."""
    lines = alt.Chart(usage).mark_line(interpolate="step-after", clip=True).encode(
        x=time_x(view), y=alt.Y("blocks_used:Q", title="blocks held", stack=None),
        color=alt.Color("group:N", title=None, legend=alt.Legend(orient="top", labelLimit=320)),
        tooltip=["group:N"])  # a line's tooltip is its first point's: only what the whole line shares
    layers: list[alt.Chart] = [lines]
    if num_blocks:
        cap = num_blocks - 1
        layers.append(alt.Chart(pd.DataFrame({"cap": [cap], "label": [f"pool {cap:,} usable blocks"]}))
                      .mark_rule(color=COLORS["total"], strokeDash=[5, 3])
                      .encode(y="cap:Q", tooltip=["label:N"]))
    return alt.layer(*layers).properties(
        title="Blocks held per KV-cache group (the groups share one pool)", height=height)
