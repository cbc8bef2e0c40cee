"""Altair chart builders for per-request views (histograms are binned here, never per row)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from profiler.units import fmt_s

HIST_BINS = 40


def histogram_frame(values: pd.Series, bins: int = HIST_BINS) -> pd.DataFrame:
    """Counts of ``values`` in ``bins`` equal bins: ``lo``, ``hi``, ``count``."""
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return pd.DataFrame({"lo": [], "hi": [], "count": []})
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": counts})


def latency_histogram(values: pd.Series, name: str, height: int = 170) -> alt.LayerChart:
    """Distribution of one latency (seconds) with its p50/p95/p99 marked."""
    hist = histogram_frame(values)
    s = values.dropna()
    q = pd.DataFrame({"quantile": ["p50", "p95", "p99"],
                      "seconds": [s.quantile(x) if len(s) else np.nan for x in (0.5, 0.95, 0.99)]})
    bars = alt.Chart(hist).mark_bar(color="#4c78a8", opacity=0.85).encode(
        x=alt.X("lo:Q", title=f"{name} (s)", bin="binned"), x2="hi:Q",
        y=alt.Y("count:Q", title="requests"),
        tooltip=[alt.Tooltip("lo:Q", format=".4f", title="from (s)"),
                 alt.Tooltip("hi:Q", format=".4f", title="to (s)"), "count:Q"])
    rules = alt.Chart(q.dropna()).mark_rule(strokeWidth=2).encode(
        x="seconds:Q",
        color=alt.Color("quantile:N", title=None, scale=alt.Scale(
            domain=["p50", "p95", "p99"], range=["#54a24b", "#f58518", "#e45756"]),
            legend=alt.Legend(orient="top-right")),
        tooltip=["quantile:N", alt.Tooltip("seconds:Q", format=".4f")])
    p = {r["quantile"]: r["seconds"] for _, r in q.iterrows()}
    sub = " · ".join(f"{k} {fmt_s(v)}" for k, v in p.items())
    return alt.layer(bars, rules).properties(
        title=alt.TitleParams(f"{name}", subtitle=sub), height=height)



def preemptions_per_request_chart(requests: pd.DataFrame, height: int = 170) -> alt.Chart:
    """How many requests were preempted 0, 1, 2, ... times."""
    counts = requests["preemptions"].fillna(0).astype(int).value_counts().sort_index()
    df = pd.DataFrame({"preemptions": counts.index.astype(str), "requests": counts.to_numpy()})
    return alt.Chart(df).mark_bar(color="#e45756").encode(
        x=alt.X("preemptions:N", title="times preempted", sort=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("requests:Q", title="requests"),
        tooltip=["preemptions:N", "requests:Q"],
    ).properties(title="Preemptions per request", height=height)


def short_long_chart(split: pd.DataFrame, height: int = 220) -> alt.Chart:
    """p50/p95 of each latency for short vs long prompts side by side (from derive.split_by_prompt)."""
    return alt.Chart(split.dropna(subset=["seconds"])).mark_bar().encode(
        x=alt.X("metric:N", title=None, sort=["TTFT", "end-to-end", "queue", "prefill", "decode"],
                axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("group:N"),
        y=alt.Y("seconds:Q", title="seconds", stack=None),
        order=alt.Order("quantile:N", sort="descending"),
        color=alt.Color("group:N", title=None, legend=alt.Legend(orient="top", labelLimit=300)),
        opacity=alt.Opacity("quantile:N", scale=alt.Scale(domain=["p50", "p95"], range=[1.0, 0.45]),
                            title=None),
        tooltip=["group:N", "metric:N", "quantile:N", alt.Tooltip("seconds:Q", format=".4f")],
    ).properties(title="Short vs long prompts: p50 (solid) and p95 (light)", height=height)


def prompt_scatter(requests: pd.DataFrame, max_points: int = 5000, height: int = 220) -> alt.Chart:
    """TTFT against prompt length (a random sample when there are many requests)."""
    df = requests[["prompt_tokens", "ttft_s", "cached_tokens", "preemptions", "request_id"]].dropna(
        subset=["prompt_tokens", "ttft_s"])
    if len(df) > max_points:
        df = df.sample(max_points, random_state=0)
    return alt.Chart(df).mark_circle(size=22, opacity=0.6).encode(
        x=alt.X("prompt_tokens:Q", title="prompt tokens", scale=alt.Scale(zero=False)),
        y=alt.Y("ttft_s:Q", title="TTFT (s)"),
        color=alt.Color("preemptions:Q", title="preempted", scale=alt.Scale(scheme="orangered")),
        tooltip=["request_id:N", "prompt_tokens:Q", "cached_tokens:Q", "preemptions:Q",
                 alt.Tooltip("ttft_s:Q", format=".4f")],
    ).properties(title="TTFT vs prompt length", height=height)
