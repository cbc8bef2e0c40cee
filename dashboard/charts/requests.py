"""Altair chart builders for per-request views (histograms are binned here, never per row)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from dashboard.charts.panels import time_x
from dashboard.data.steps import View
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
    """How many requests were preempted 0, 1, 2, ... times (requests without a count are left out:
    a count vLLM did not report is not 0)."""
    counts = requests["preemptions"].dropna().astype(int).value_counts().sort_index()
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


def prompt_scatter(requests: pd.DataFrame, max_points: int = 5000, height: int = 220,
                   groups: dict[str, str] | None = None) -> alt.Chart:
    """TTFT against prompt length (a random sample when there are many requests), coloured by the
    times each request was preempted where vLLM counted them, else by its shared prefix."""
    df = requests.dropna(subset=["prompt_tokens", "ttft_s"]).copy()
    if len(df) > max_points:
        df = df.sample(max_points, random_state=0)
    tooltip = [alt.Tooltip("request_id:N", title="request"), "prompt_tokens:Q",
               alt.Tooltip("ttft_s:Q", format=".4f", title="TTFT (s)")]
    if df["preemptions"].notna().all():
        color = alt.Color("preemptions:Q", title="preempted", scale=alt.Scale(scheme="orangered"))
        tooltip.append(alt.Tooltip("preemptions:Q", title="preempted"))
    elif groups:
        df["prefix"] = df["request_id"].astype(str).map(lambda r: groups.get(r, "prefix not recorded"))
        color = prefix_color(df["prefix"])
        tooltip.append(alt.Tooltip("prefix:N"))
    else:
        color = alt.value("#4c78a8")
    if df["cached_tokens"].notna().any():
        tooltip.append(alt.Tooltip("cached_tokens:Q", title="cached tokens"))
    df = df.drop(columns=[c for c in df.columns if df[c].isna().all()])
    return alt.Chart(df).mark_circle(size=22, opacity=0.6).encode(
        x=alt.X("prompt_tokens:Q", title="prompt tokens", scale=alt.Scale(zero=False)),
        y=alt.Y("ttft_s:Q", title="TTFT (s)"), color=color, tooltip=tooltip,
    ).properties(title="TTFT vs prompt length", height=height)


PHASE_OPACITY = {"queued": 0.25, "prefill": 1.0, "decode": 0.6, "in system": 0.6, "preempted": 1.0}
TABLEAU20 = ["#4c78a8", "#9ecae9", "#f58518", "#ffbf79", "#54a24b", "#88d27a", "#b79a20", "#f2cf5b",
             "#439894", "#83bcb6", "#e45756", "#ff9d98", "#79706e", "#bab0ac", "#d67195", "#fcbfd2",
             "#b279a2", "#d6a5c9", "#9e765f", "#d8b5a5"]
"""Vega's tableau20: 20 colours, so up to 20 prefixes never share one (the theme's repeats after 10)."""


def prefix_color(values: pd.Series, title: str = "starts with") -> alt.Color:
    """A colour per shared prefix (in "prefix A", "prefix B" ... order; beyond 20 they repeat),
    grey for requests without a shared prefix or whose prefix was not recorded."""
    names = sorted({str(v) for v in values.dropna()}, key=lambda n: (len(n), n))
    plain = [n for n in names if not n.startswith("prefix ")]
    shared = [n for n in names if n.startswith("prefix ")]
    domain = shared + plain
    rng = [TABLEAU20[i % len(TABLEAU20)] for i in range(len(shared))] + ["#c7c7c7"] * len(plain)
    return alt.Color("prefix:N", title=title, scale=alt.Scale(domain=domain, range=rng),
                     legend=alt.Legend(orient="top", labelLimit=200, columns=10))


def swimlane_chart(spans: pd.DataFrame, view: View, evictions: pd.DataFrame | None = None) -> alt.LayerChart:
    """One lane per request (arrival order): queued (faint), prefill (solid) and decode (half)
    spans coloured by the shared prompt prefix the request starts with; each recorded preemption
    in black, from the preemption to its resume (a black tick where the resume was not recorded);
    a red dot ends the lane of a request vLLM counted as preempted when the session did not record
    when; evictions (KV events) as grey ticks."""
    lanes = int(spans["lane"].max()) + 1 if not spans.empty else 1
    height = int(min(max(lanes * 5, 160), 900))
    y = alt.Y("lane:O", title=f"requests ({lanes}, by arrival)", axis=alt.Axis(labels=False, ticks=False,
                                                                             domain=False))
    tip = [alt.Tooltip("request_id:N", title="request"), alt.Tooltip("phase:N"), alt.Tooltip("prefix:N"),
           alt.Tooltip("t_s:Q", format=".3f", title="from (s)"), alt.Tooltip("t_end_s:Q", format=".3f", title="to (s)")]
    base = spans[spans["phase"] != "preempted"]
    base = base.assign(alpha=base["phase"].map(PHASE_OPACITY).fillna(0.6))
    bars = alt.Chart(base).mark_bar(height={"band": 0.9}, clip=True).encode(
        x=time_x(view), x2="t_end_s:Q", y=y,
        color=prefix_color(base["prefix"]),
        opacity=alt.Opacity("alpha:Q", scale=None, legend=None),
        tooltip=tip)
    layers: list[alt.Chart] = [bars]
    pre = spans[spans["phase"] == "preempted"]
    spanned = pre[pre["t_end_s"].notna()]
    if not spanned.empty:
        layers.append(alt.Chart(spanned).mark_bar(height={"band": 0.9}, color="#111111", clip=True).encode(
            x=time_x(view), x2="t_end_s:Q", y=y,
            tooltip=[*tip[:3], alt.Tooltip("t_s:Q", format=".3f", title="preempted at (s)"),
                     alt.Tooltip("t_end_s:Q", format=".3f", title="resumed at (s)")]))
    open_ended = pre[pre["t_end_s"].isna()]
    if not open_ended.empty:
        layers.append(alt.Chart(open_ended).mark_tick(color="#111111", thickness=2, clip=True).encode(
            x=time_x(view), y=y,
            tooltip=[*tip[:3], alt.Tooltip("t_s:Q", format=".3f", title="preempted at (s; resume not recorded)")]))
    counted = spans[(spans["preemptions"].fillna(0) > 0) & ~spans["lane"].isin(pre["lane"])]
    counted = counted.groupby("lane", as_index=False).agg(
        t_end_s=("t_end_s", "max"), preemptions=("preemptions", "first"), request_id=("request_id", "first"))
    if not counted.empty:
        layers.append(alt.Chart(counted).mark_point(color="#d62728", filled=True, size=30, clip=True).encode(
            x=alt.X("t_end_s:Q", scale=alt.Scale(domain=[view.t0_s, view.t1_s], nice=False)), y=y,
            tooltip=[alt.Tooltip("request_id:N", title="request"),
                     alt.Tooltip("preemptions:Q", title="times preempted")]))
    if evictions is not None and not evictions.empty:
        layers.append(alt.Chart(evictions).mark_tick(color="#777777", thickness=1, size=8, clip=True).encode(
            x=time_x(view), y=alt.value(4),
            tooltip=[alt.Tooltip("t_s:Q", format=".2f", title="t (s)"),
                     alt.Tooltip("evictions_per_s:Q", format=",.0f", title="evictions / s")]))
    sub = "queued (faint), prefill (solid), decode (half), coloured by shared prefix"
    if not pre.empty:
        sub += "; preempted until resumed (black)"
    elif not counted.empty:
        sub += "; red dot: preempted (when was not recorded)"
    return alt.layer(*layers).properties(title=alt.TitleParams("Requests over time", subtitle=sub),
                                         height=height)
