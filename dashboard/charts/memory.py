"""Altair chart builders for the Memory page: start-up waterfall, per-process and allocator memory."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import time_x
from dashboard.data import derive
from dashboard.data.steps import View


def process_memory_chart(samples: pd.DataFrame, view: View, height: int = 220) -> alt.Chart:
    """NVML memory per process over time, colored by role."""
    df = samples.assign(gib=samples["used_bytes"] / derive.GIB)
    return alt.Chart(df).mark_line(interpolate="step-after").encode(
        x=time_x(view), y=alt.Y("gib:Q", title="GiB"),
        color=alt.Color("process:N", title="process"),
        strokeDash=alt.StrokeDash("device_index:N", title="GPU"),
        tooltip=[alt.Tooltip("t_s:Q", format=".2f", title="t (s)"), "process:N", "device_index:N",
                 alt.Tooltip("gib:Q", format=".2f", title="GiB")],
    ).properties(title="GPU memory per process (NVML)", height=height)


def allocator_chart(samples: pd.DataFrame, view: View, height: int = 220) -> alt.Chart:
    """Torch allocator reserved vs allocated per worker: the gap is fragmentation / cached blocks."""
    long = samples.melt(id_vars=["t_s", "process"], value_vars=["reserved_bytes", "allocated_bytes"],
                        var_name="measure", value_name="bytes")
    long["gib"] = long["bytes"] / derive.GIB
    long["measure"] = long["measure"].str.replace("_bytes", "", regex=False)
    return alt.Chart(long).mark_line(interpolate="step-after").encode(
        x=time_x(view), y=alt.Y("gib:Q", title="GiB"),
        color=alt.Color("measure:N", title=None, scale=alt.Scale(
            domain=["reserved", "allocated"], range=["#f58518", "#4c78a8"])),
        strokeDash=alt.StrokeDash("process:N", title="worker"),
        tooltip=[alt.Tooltip("t_s:Q", format=".2f", title="t (s)"), "process:N", "measure:N",
                 alt.Tooltip("gib:Q", format=".3f", title="GiB")],
    ).properties(title="Torch allocator per worker: reserved vs allocated", height=height)


def waterfall_chart(steps: pd.DataFrame, title: str) -> alt.LayerChart:
    """Start-up memory waterfall (from ``derive.startup_waterfall``) as horizontal floating bars."""
    colors = alt.Scale(domain=["total", "outside", "budget", "used", "left"],
                       range=["#bbbbbb", "#e0e0e0", "#9ecae9", "#4c78a8", "#54a24b"])
    y = alt.Y("label:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelLimit=260))
    bars = alt.Chart(steps).mark_bar(height=18).encode(
        y=y, x=alt.X("start_gib:Q", title="GiB"), x2="end_gib:Q",
        color=alt.Color("kind:N", scale=colors, legend=None),
        tooltip=["label:N", alt.Tooltip("value_gib:Q", format=".3f", title="GiB"),
                 alt.Tooltip("end_gib:Q", format=".3f", title="cumulative GiB")])
    labels = alt.Chart(steps).mark_text(align="left", dx=4, fontSize=11).encode(
        y=y, x="end_gib:Q", text=alt.Text("value_gib:Q", format=".2f"))
    return alt.layer(bars, labels).properties(title=title, height=32 * max(len(steps), 1))
