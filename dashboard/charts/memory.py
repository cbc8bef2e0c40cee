"""Altair chart builders for the Memory page: start-up waterfall, per-process and allocator memory."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import Panel, Source, empty_panel, time_x
from dashboard.data import derive
from dashboard.data.steps import View


def process_memory_chart(samples: pd.DataFrame, view: View, height: int = 220) -> alt.Chart:
    """NVML memory per process over time: one colour and label per process and GPU (tensor-parallel
    workers read apart: "worker 0 (pid 3058) · GPU 0", "worker 1 (pid 3059) · GPU 1")."""
    df = samples.assign(gib=samples["used_bytes"] / derive.GIB,
                        holder=samples["process"].astype(str) + " · GPU "
                        + samples["device_index"].astype("Int64").astype(str))
    return alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=2).encode(
        x=time_x(view), y=alt.Y("gib:Q", title="GiB"),
        color=alt.Color("holder:N", title="process · GPU", legend=alt.Legend(orient="right", labelLimit=320)),
        tooltip=[alt.Tooltip("holder:N", title="process")],  # a line's tooltip is its first point's
    ).properties(title="GPU memory per process (NVML)", height=height)


def allocator_chart(samples: pd.DataFrame, view: View, height: int = 220) -> alt.Chart:
    """Torch allocator reserved vs allocated per worker: the gap is fragmentation / cached blocks."""
    long = samples.melt(id_vars=["t_s", "process"], value_vars=["reserved_bytes", "allocated_bytes"],
                        var_name="measure", value_name="bytes")
    long["gib"] = long["bytes"] / derive.GIB
    long["measure"] = long["measure"].str.replace("_bytes", "", regex=False)
    return alt.Chart(long).mark_line(interpolate="step-after", strokeWidth=2).encode(
        x=time_x(view), y=alt.Y("gib:Q", title="GiB"),
        color=alt.Color("process:N", title="worker", legend=alt.Legend(orient="right", labelLimit=320)),
        strokeDash=alt.StrokeDash("measure:N", title=None, scale=alt.Scale(
            domain=["reserved", "allocated"], range=[[1, 0], [5, 3]])),
        tooltip=["process:N", "measure:N"],  # a line's tooltip is its first point's
    ).properties(title="Torch allocator per worker: reserved vs allocated", height=height)


def waterfall_chart(steps: pd.DataFrame, title: str) -> alt.LayerChart:
    """Start-up memory waterfall (from ``derive.startup_waterfall``) as horizontal floating bars."""
    colors = alt.Scale(domain=["total", "outside", "budget", "used", "left", "over"],
                       range=["#bbbbbb", "#e0e0e0", "#9ecae9", "#4c78a8", "#54a24b", "#d62728"])
    y = alt.Y("label:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelLimit=260))
    bars = alt.Chart(steps).mark_bar(height=18).encode(
        y=y, x=alt.X("start_gib:Q", title="GiB"), x2="end_gib:Q",
        color=alt.Color("kind:N", scale=colors, legend=None),
        tooltip=["label:N", alt.Tooltip("value_gib:Q", format=".3f", title="GiB"),
                 alt.Tooltip("end_gib:Q", format=".3f", title="cumulative GiB")])
    labels = alt.Chart(steps).mark_text(align="left", dx=4, fontSize=11).encode(
        y=y, x="end_gib:Q", text=alt.Text("value_gib:Q", format=".2f"))
    return alt.layer(bars, labels).properties(title=title, height=32 * max(len(steps), 1))


_KIND_COLORS = {"weights": ["#9ecae9", "#c6dbef"], "KV cache": ["#3366aa", "#6a51a3"],
                "activations + other": ["#f58518", "#ffbf79"], "process": ["#72b7b2", "#54a24b"],
                "foreign": ["#e45756", "#b2182b", "#d6604d", "#f4a582"], "driver": ["#cfcfcf"]}
"""Band colours by kind; a second worker or foreign process on one device takes the next shade."""


def band_colors(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(bands in stack order, their colours) for an attribution frame."""
    bands = df.drop_duplicates("band").sort_values("order")
    used: dict[str, int] = {}
    colors = []
    for kind in bands["kind"]:
        palette = _KIND_COLORS.get(kind, ["#9467bd"])
        colors.append(palette[used.get(kind, 0) % len(palette)])
        used[kind] = used.get(kind, 0) + 1
    return list(bands["band"]), colors


def attribution_panel(df: pd.DataFrame, view: View, title: str, total_bytes: float | None,
                      height: int = 200) -> Panel:
    """One GPU's memory stacked by owner: engine processes (weights / KV cache / activations +
    other), processes outside the session by pid, and the driver / not attributed rest."""
    if df.empty:
        return empty_panel("no NVML samples in this range", view, height)
    domain, colors = band_colors(df)
    total = pd.DataFrame({"gib": [total_bytes / derive.GIB]}) if total_bytes else None

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        area = alt.Chart(d["bands"]).mark_area(interpolate="step-after", opacity=0.9).encode(
            x=time_x(view),
            y=alt.Y("gib:Q", title="GiB", stack="zero"),
            color=alt.Color("band:N", title=None, sort=domain, scale=alt.Scale(domain=domain, range=colors),
                            legend=alt.Legend(orient="top", columns=3, labelLimit=330, symbolType="square")),
            order=alt.Order("order:Q"),
            tooltip=[alt.Tooltip("band:N", title="holder")],  # an area's tooltip is its first point's
        )
        layers: list[alt.Chart] = [area]
        if "total" in d:
            layers.append(alt.Chart(d["total"]).mark_rule(strokeDash=[5, 3], color="#333333").encode(
                y="gib:Q", tooltip=[alt.Tooltip("gib:Q", format=".1f", title="device total GiB")]))
        return alt.layer(*layers).properties(title=title, height=height)

    frames = {"bands": df} | ({"total": total} if total is not None else {})
    return Panel(frames, ("attr", title, tuple(domain), total is not None, height), draw)
