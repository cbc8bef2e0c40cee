"""Altair chart builders for the time-based views: one function per chart, data already downsampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd

from dashboard import derive
from dashboard.steps import View

TIME_TITLE = "time since session start (s)"
PANEL_HEIGHT = 150
COLORS = {
    "kv": "#4c78a8", "running": "#4c78a8", "waiting": "#f58518", "preempt": "#e45756",
    "prompt": "#72b7b2", "generation": "#54a24b", "hit": "#b279a2", "rolling": "#7b3294",
    "used": "#4c78a8", "total": "#333333", "cursor": "#d62728", "startup": "#dddddd",
}
ZOOM_PARAM = "zoom"
"""Name of the navigator's interval selection (Streamlit returns it under this key)."""


def time_x(view: View, title: str | None = TIME_TITLE, labels: bool = True) -> alt.X:
    """The shared time axis of every timeline panel, fixed to the view's range."""
    return alt.X("t_s:Q", title=title, scale=alt.Scale(domain=[view.t0_s, view.t1_s], nice=False),
                 axis=alt.Axis(labels=labels, grid=True, tickCount=10))


def _empty_note(text: str, view: View, height: int) -> alt.Chart:
    df = pd.DataFrame({"t_s": [(view.t0_s + view.t1_s) / 2], "y": [0.5], "text": [text]})
    return alt.Chart(df).mark_text(color="#888", fontSize=13).encode(
        x=time_x(view), y=alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[0, 1])), text="text:N"
    ).properties(height=height)


def _cursor(chart: alt.Chart | alt.LayerChart, cursor_s: float | None,
            view: View) -> alt.Chart | alt.LayerChart:
    if cursor_s is None:
        return chart
    rule = alt.Chart(pd.DataFrame({"t_s": [cursor_s], "label": ["replay cursor"]})).mark_rule(
        color=COLORS["cursor"], strokeWidth=2, clip=True).encode(x=time_x(view), tooltip=["label:N"])
    return alt.layer(chart, rule)


def _engine_color(df: pd.DataFrame, default: str) -> dict[str, object]:
    """Color by engine only when the data holds more than one."""
    if "engine_id" in df and df["engine_id"].nunique() > 1:
        return {"color": alt.Color("engine_id:N", title="engine")}
    return {"color": alt.value(default)}


def kv_usage_chart(buckets: pd.DataFrame, view: View, num_blocks: int | None = None,
                   cursor_s: float | None = None, height: int = PANEL_HEIGHT) -> alt.Chart | alt.LayerChart:
    """KV cache usage (% of blocks) per pixel bucket, with the 100 % capacity line."""
    df = derive.kv_series(buckets)
    if df.empty:
        return _empty_note("no engine steps in this range", view, height)
    cap = f" of {num_blocks} blocks" if num_blocks else ""
    line = alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=time_x(view),
        y=alt.Y("value:Q", title="KV usage", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1.05])),
        tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"),
                 alt.Tooltip("value:Q", format=".1%", title="KV usage")],
        **_engine_color(df, COLORS["kv"]),
    )
    capacity = alt.Chart(pd.DataFrame({"value": [1.0]})).mark_rule(
        strokeDash=[4, 3], color=COLORS["total"]).encode(y="value:Q")
    chart = alt.layer(line, capacity).properties(title=f"KV cache usage{cap}", height=height)
    return _cursor(chart, cursor_s, view)


def queue_chart(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                height: int = PANEL_HEIGHT) -> alt.Chart | alt.LayerChart:
    """Running and waiting requests per pixel bucket."""
    df = derive.queue_series(buckets)
    if df.empty:
        return _empty_note("no engine steps in this range", view, height)
    chart = alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=time_x(view),
        y=alt.Y("value:Q", title="requests"),
        color=alt.Color("state:N", title=None,
                        scale=alt.Scale(domain=["running", "waiting"],
                                        range=[COLORS["running"], COLORS["waiting"]]),
                        legend=alt.Legend(orient="top", direction="horizontal")),
        detail="engine_id:N",
        tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"), "state:N",
                 alt.Tooltip("value:Q", title="requests")],
    ).properties(title="Requests running and waiting", height=height)
    return _cursor(chart, cursor_s, view)


def preemption_chart(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT, smooth_s: float = 0.0) -> alt.Chart | alt.LayerChart:
    """Preemptions per second (area, averaged over ``smooth_s``) with a tick at every bucket that
    preempted."""
    rate = derive.rate_series(buckets, view, {"preemptions": "preemptions/s"}, smooth_s)
    marks = derive.preemption_markers(buckets)
    if rate.empty:
        return _empty_note("no engine steps in this range", view, height)
    bars = alt.Chart(rate).mark_area(interpolate="step", color=COLORS["preempt"], opacity=0.5).encode(
        x=time_x(view), y=alt.Y("per_s:Q", title="preemptions / s", axis=alt.Axis(format=",.4~f")),
        tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"),
                 alt.Tooltip("per_s:Q", format=".1f", title="preemptions/s")],
    )
    layers: list[alt.Chart] = [bars]
    if not marks.empty:
        layers.append(alt.Chart(marks).mark_tick(color=COLORS["preempt"], thickness=2, size=10, clip=True).encode(
            x=time_x(view), y=alt.value(4),
            tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"), "preemptions:Q"],
        ))
    chart = alt.layer(*layers).properties(
        title=f"Preemptions per second{_smooth_note(smooth_s)} (ticks mark the preempting steps)",
        height=height)
    return _cursor(chart, cursor_s, view)


def prefix_hit_chart(buckets: pd.DataFrame, view: View, rolling_s: float,
                     cursor_s: float | None = None, height: int = PANEL_HEIGHT) -> alt.Chart | alt.LayerChart:
    """Prefix-cache hit rate per bucket (points) and over a rolling window (line)."""
    df = derive.hit_rate_series(buckets, view, rolling_s)
    if df.empty:
        return _empty_note("no prefix-cache queries in this range", view, height)
    names = list(dict.fromkeys(df["series"]))
    base = alt.Chart(df).encode(
        x=time_x(view),
        y=alt.Y("hit_rate_frac:Q", title="hit rate", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("series:N", title=None, scale=alt.Scale(
            domain=names, range=[COLORS["hit"], COLORS["rolling"]]), legend=alt.Legend(orient="top", direction="horizontal")),
        tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"), "series:N",
                 alt.Tooltip("hit_rate_frac:Q", format=".1%", title="hit rate"),
                 alt.Tooltip("queries_tokens:Q", title="queried tokens")],
    )
    points = base.transform_filter(alt.datum.series == names[0]).mark_circle(size=14, opacity=0.5)
    line = base.transform_filter(alt.datum.series != names[0]).mark_line(strokeWidth=2)
    chart = alt.layer(points, line).properties(title="Prefix-cache hit rate (tokens hit / tokens queried)",
                                               height=height)
    return _cursor(chart, cursor_s, view)


def _smooth_note(smooth_s: float) -> str:
    return f", rolling {smooth_s:g} s" if smooth_s > 0 else ""


def throughput_chart(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT, smooth_s: float = 0.0) -> alt.Chart | alt.LayerChart:
    """Prompt and generation tokens per second (per pixel bucket, averaged over ``smooth_s``)."""
    df = derive.rate_series(buckets, view, {"prompt_tokens": "prompt", "generation_tokens": "generation"},
                            smooth_s)
    if df.empty:
        return _empty_note("no engine steps in this range", view, height)
    chart = alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=time_x(view),
        y=alt.Y("per_s:Q", title="tokens / s"),
        color=alt.Color("series:N", title=None, scale=alt.Scale(
            domain=["prompt", "generation"], range=[COLORS["prompt"], COLORS["generation"]]),
            legend=alt.Legend(orient="top", direction="horizontal")),
        detail="engine_id:N",
        tooltip=[alt.Tooltip("t_s:Q", format=".3f", title="t (s)"), "series:N",
                 alt.Tooltip("per_s:Q", format=",.0f", title="tokens/s")],
    ).properties(title=f"Throughput: prompt and generation tokens per second{_smooth_note(smooth_s)}",
                 height=height)
    return _cursor(chart, cursor_s, view)


def gpu_memory_chart(samples: pd.DataFrame, startup: pd.Series | None, total_bytes: float | None,
                     view: View, title: str, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT + 30) -> alt.Chart | alt.LayerChart:
    """One device's NVML memory: stacked weights / KV cache / activations+other, and the total."""
    df = derive.gpu_breakdown(samples, startup)
    if df.empty:
        return _empty_note("no NVML samples in this range", view, height)
    order = ["weights", "KV cache", "activations + other", "used (no start-up profile)"]
    area = alt.Chart(df).mark_area(interpolate="step-after", opacity=0.85).encode(
        x=time_x(view),
        y=alt.Y("gib:Q", title="GiB", stack="zero"),
        color=alt.Color("part:N", title=None, sort=order, scale=alt.Scale(
            domain=order, range=["#9ecae9", "#4c78a8", "#f58518", "#4c78a8"]),
            legend=alt.Legend(orient="top", direction="horizontal")),
        order=alt.Order("part_order:Q"),
        tooltip=[alt.Tooltip("t_s:Q", format=".2f", title="t (s)"), "part:N",
                 alt.Tooltip("gib:Q", format=".2f", title="GiB")],
    ).transform_calculate(part_order=f"indexof({order!r}, datum.part)")
    layers: list[alt.Chart] = [area]
    if total_bytes:
        layers.append(alt.Chart(pd.DataFrame({"gib": [total_bytes / derive.GIB]})).mark_rule(
            strokeDash=[5, 3], color=COLORS["total"]).encode(
            y="gib:Q", tooltip=[alt.Tooltip("gib:Q", format=".1f", title="device total GiB")]))
    chart = alt.layer(*layers).properties(title=title, height=height)
    return _cursor(chart, cursor_s, view)


def navigator_chart(buckets: pd.DataFrame, whole: View, zoom: tuple[float, float] | None,
                    startup_end_s: float | None, view: View | None = None) -> alt.LayerChart:
    """Whole-session strip (peak KV usage per bucket) with a brush: drag to choose the range every
    panel shows. ``zoom`` is the brush's initial range (None: no brush yet); ``view`` is shaded as
    the range the panels show."""
    if buckets.empty:
        df = pd.DataFrame({"t_s": [whole.t0_s, whole.t1_s], "kv": [0.0, 0.0]})
    else:
        df = pd.DataFrame({"t_s": buckets["t_lo_s"], "kv": buckets["kv_usage_frac_max"]})
    if zoom is not None:
        brush = alt.selection_interval(name=ZOOM_PARAM, encodings=["x"],
                                       value={"x": [float(zoom[0]), float(zoom[1])]})
    else:
        brush = alt.selection_interval(name=ZOOM_PARAM, encodings=["x"])
    layers: list[alt.Chart] = []
    if startup_end_s is not None and startup_end_s > whole.t0_s:
        band = pd.DataFrame({"t_s": [whole.t0_s], "t_end_s": [startup_end_s], "label": ["engine start-up"]})
        layers.append(alt.Chart(band).mark_rect(color=COLORS["startup"], opacity=0.6).encode(
            x=time_x(whole, title=None), x2="t_end_s:Q", tooltip=["label:N"]))
    area = alt.Chart(df).mark_area(interpolate="step-after", color=COLORS["kv"], opacity=0.7).encode(
        x=time_x(whole, title=None),
        y=alt.Y("kv:Q", title="KV", axis=alt.Axis(format="%", tickCount=2),
                scale=alt.Scale(domain=[0, 1])),
    ).add_params(brush)
    layers.append(area)
    if view is not None:  # on top of the area, so the shown range stays visible under any brush
        here = pd.DataFrame({"t_s": [view.t0_s], "t_end_s": [view.t1_s], "label": ["range shown below"]})
        layers.append(alt.Chart(here).mark_rect(color="#f58518", opacity=0.3).encode(
            x=time_x(whole, title=None), x2="t_end_s:Q", tooltip=["label:N"]))
    title = alt.TitleParams("Whole session (peak KV usage): drag to zoom every panel, double-click to reset",
                            fontSize=12, fontWeight="normal", color="#555")
    return alt.layer(*layers).properties(height=60, title=title)


def compare_chart(df: pd.DataFrame, value: str, title: str, y_title: str, fmt: str | None = None,
                  height: int = 180) -> alt.Chart:
    """Two sessions' series on time from their own start, colored by session."""
    axis = alt.Axis(format=fmt) if fmt else alt.Axis()
    return alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=alt.X("t_s:Q", title="time since first engine step (s)"),
        y=alt.Y(f"{value}:Q", title=y_title, axis=axis),
        color=alt.Color("session:N", title=None, legend=alt.Legend(orient="top", labelLimit=400),
                        scale=alt.Scale(range=["#4c78a8", "#f58518"])),
        tooltip=["session:N", alt.Tooltip("t_s:Q", format=".2f", title="t (s)"),
                 alt.Tooltip(f"{value}:Q", format=fmt or ",.2f", title=y_title)],
    ).properties(title=title, height=height)


def _bind_x_to_brush(chart: alt.Chart | alt.LayerChart) -> alt.Chart | alt.LayerChart:
    """Make a panel's time axis follow the navigator brush (zoom without a round trip); in place."""
    out = chart
    layers = out.layer if isinstance(out, alt.LayerChart) else [out]
    for layer in layers:
        x = layer.encoding.x if layer.encoding is not alt.Undefined else alt.Undefined
        if isinstance(x, alt.X):
            x.scale = alt.Scale(domain={"param": ZOOM_PARAM, "encoding": "x"}, nice=False)
    return out


def _name_datasets(chart: alt.TopLevelMixin, prefix: str, datasets: dict[str, pd.DataFrame]) -> None:
    """Move every inline DataFrame of ``chart`` into ``datasets`` under a fixed name."""
    layers = [chart, *chart.layer] if isinstance(chart, alt.LayerChart) else [chart]
    for j, layer in enumerate(layers):
        if isinstance(layer.data, pd.DataFrame):
            name = f"{prefix}_{j}"
            datasets[name] = layer.data
            layer.data = alt.NamedData(name=name)


@dataclass
class LinkedTimeline:
    """The Timeline as one Vega-Lite view: navigator + panels, data in fixed-name datasets.

    With fixed dataset names the spec is the same for every zoom, so Streamlit swaps the new
    data into the live chart instead of rebuilding it.
    """

    chart: alt.VConcatChart
    datasets: dict[str, pd.DataFrame]

    def spec(self) -> dict[str, Any]:
        """The Vega-Lite spec with the datasets attached (for ``st.vega_lite_chart``)."""
        # The builders' output is validated in the tests; skipping jsonschema here halves a zoom.
        spec = self.chart.to_dict(validate=False)
        view = spec.get("config", {}).get("view", {})
        view.pop("continuousWidth", None)
        view.pop("continuousHeight", None)
        spec["datasets"] = dict(self.datasets)
        # Fit the stacked panels to the page width (Streamlit leaves nested layers unfitted).
        spec["autosize"] = {"type": "fit-x", "contains": "padding"}
        return spec

    def rows(self) -> int:
        """Rows sent to the browser in all datasets together."""
        return sum(len(d) for d in self.datasets.values())


def _append_layer(chart: alt.LayerChart, extra: alt.Chart) -> alt.LayerChart:
    """Add a layer to a layered chart keeping its properties (title, height)."""
    chart.layer = [*chart.layer, extra.copy()]
    return chart


def linked_timeline(navigator: alt.LayerChart, panels: list[alt.Chart | alt.LayerChart],
                    view: View) -> LinkedTimeline:
    """The navigator and the panels stacked in one view: brushing the navigator zooms every panel
    at once in the browser, while the server re-reads the new range at full resolution.

    Takes ownership of the charts passed in (their data and x scales are rewritten in place)."""
    nav = navigator
    # An invisible point at each end of the view: with no brush, every panel's axis spans the view.
    anchor = alt.Chart(pd.DataFrame({"t_s": [view.t0_s, view.t1_s]})).mark_point(opacity=0).encode(
        x=time_x(view))
    bound = [_bind_x_to_brush(alt.layer(p, anchor) if not isinstance(p, alt.LayerChart)
                              else _append_layer(p, anchor)) for p in panels]
    datasets: dict[str, pd.DataFrame] = {}
    _name_datasets(nav, "nav", datasets)
    for i, p in enumerate(bound):
        _name_datasets(p, f"panel{i}", datasets)
    chart = alt.vconcat(nav, *bound, spacing=22).resolve_scale(
        x="independent", color="independent").configure_axisY(minExtent=58)
    return LinkedTimeline(chart, datasets)
