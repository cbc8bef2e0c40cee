"""Altair charts of histogram latency (attach sessions): counts per bucket, percentiles over time
with the bucket that bounds each one."""

from __future__ import annotations

import altair as alt
import pandas as pd

from profiler.units import fmt_s

QUANTILE_COLORS = {"p50": "#54a24b", "p95": "#f58518", "p99": "#e45756"}


def bucket_chart(buckets: pd.DataFrame, name: str, subtitle: str, height: int = 170) -> alt.Chart:
    """Requests per histogram bucket (buckets in order; their widths are the server's)."""
    order = list(buckets["bucket"])
    return alt.Chart(buckets).mark_bar(color="#4c78a8", opacity=0.85).encode(
        x=alt.X("bucket:N", sort=order, title=f"{name}: server histogram bucket",
                axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("observations:Q", title="requests"),
        tooltip=["bucket:N", "observations:Q"],
    ).properties(title=alt.TitleParams(name, subtitle=subtitle), height=height)


def percentiles_chart(binned: pd.DataFrame, name: str, height: int = 200) -> alt.LayerChart:
    """p50/p95/p99 per time bin; the band around each line is the histogram bucket holding it."""
    parts = []
    for q in ("p50", "p95", "p99"):
        if f"{q}_s" not in binned:
            continue
        d = binned[["t_s", "bin_s", "observations", f"{q}_s", f"{q}_lo_s", f"{q}_hi_s"]].copy()
        d.columns = ["t_s", "bin_s", "observations", "value_s", "lo_s", "hi_s"]
        d["hi_s"] = d["hi_s"].fillna(d["lo_s"])  # the open bucket: its lower bound only
        d["t_mid_s"] = d["t_s"] + d["bin_s"] / 2
        d["quantile"] = q
        parts.append(d.dropna(subset=["value_s"]))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["t_mid_s", "value_s", "lo_s", "hi_s", "quantile", "observations"])
    color = alt.Color("quantile:N", title=None, scale=alt.Scale(
        domain=list(QUANTILE_COLORS), range=list(QUANTILE_COLORS.values())),
        legend=alt.Legend(orient="top", direction="horizontal"))
    x = alt.X("t_mid_s:Q", title="time since session start (s)")
    band = alt.Chart(df).mark_area(opacity=0.15).encode(x=x, y="lo_s:Q", y2="hi_s:Q", color=color)
    base = alt.Chart(df).encode(x=x, y=alt.Y("value_s:Q", title="seconds"), color=color)
    # the readout on the points: a line's tooltip would be its first point's wherever it is hovered
    points = base.mark_point(filled=True).encode(
        tooltip=["quantile:N", alt.Tooltip("t_mid_s:Q", format=".1f", title="t (s)"),
                 alt.Tooltip("value_s:Q", format=".4f", title="value (s)"),
                 alt.Tooltip("lo_s:Q", format="g", title="bucket from (s)"),
                 alt.Tooltip("hi_s:Q", format="g", title="bucket to (s)"), "observations:Q"])
    last = df[df["quantile"] == "p50"]
    sub = f"bins of {fmt_s(float(binned['bin_s'].iloc[0]))}" if not binned.empty else ""
    if not last.empty:
        sub += " · shaded: the histogram bucket each value lies in"
    return alt.layer(band, base.mark_line(), points).properties(title=alt.TitleParams(f"{name} over time", subtitle=sub),
                                            height=height)
