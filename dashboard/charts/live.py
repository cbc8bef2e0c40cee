"""Charts of the Live page that the timeline panels do not draw: each device's memory in use over
the window (NVML), against its total."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import COLORS, time_x
from dashboard.data.steps import View

GIB = 2**30


def gpu_used_chart(samples: pd.DataFrame, view: View, total_bytes: float | None, title: str,
                   height: int = 140) -> alt.LayerChart:
    """One device's NVML memory in use (GiB) over ``view``, with its total as a dashed rule."""
    df = pd.DataFrame({"t_s": samples["t_s"].astype(float),
                       "gib": samples["used_bytes"].astype(float) / GIB}).dropna()
    line = alt.Chart(df).mark_line(interpolate="step-after", color=COLORS["used"]).encode(
        x=time_x(view), y=alt.Y("gib:Q", title="GiB"))
    layers: list[alt.Chart] = [line]
    if total_bytes:
        layers.append(alt.Chart(pd.DataFrame({"gib": [total_bytes / GIB]})).mark_rule(
            strokeDash=[5, 3], color=COLORS["total"]).encode(
            y="gib:Q", tooltip=[alt.Tooltip("gib:Q", format=".1f", title="device total GiB")]))
    return alt.layer(*layers).properties(title=title, height=height)
