"""Altair chart builders for the time-based views: one function per chart, data already downsampled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import pandas as pd
import pyarrow as pa

from dashboard.data import derive
from dashboard.data.steps import View

TIME_TITLE = "time since session start (s)"
PANEL_HEIGHT = 150
STRIP_PX = 8
"""Height of the strip along a panel's bottom that marks buckets with an event (preemptions)."""
COLORS = {
    "kv": "#4c78a8", "running": "#4c78a8", "waiting": "#f58518", "preempt": "#e45756",
    "prompt": "#72b7b2", "generation": "#54a24b", "hit": "#b279a2", "rolling": "#7b3294",
    "used": "#4c78a8", "total": "#333333", "cursor": "#d62728", "startup": "#dddddd",
}
ZOOM_PARAM = "zoom"
"""Name of the navigator's interval selection (Streamlit returns it under this key)."""
RESET_PARAM = "reset"
"""A double-click on the navigator, reported on its own: a brush drawn from a stored zoom (after a
page change) clears without Streamlit seeing a change of the zoom selection."""


def time_x(view: View, title: str | None = TIME_TITLE, labels: bool = True) -> alt.X:
    """The shared time axis of every timeline panel, fixed to the view's range."""
    return alt.X("t_s:Q", title=title, scale=alt.Scale(domain=[view.t0_s, view.t1_s], nice=False),
                 axis=alt.Axis(labels=labels, grid=True, tickCount=10))


Source = pd.DataFrame | alt.NamedData
"""What a panel draws from: its frame inline, or a named dataset that carries it."""


@dataclass
class Panel:
    """A chart split into its data and its drawing.

    ``frames`` are the rows it shows; ``draw`` builds the chart from one data source per frame
    (the frames themselves, or named datasets); ``shape`` is everything besides the rows that the
    drawn spec depends on. Two panels of equal shape draw the same spec from the same names, so
    the Timeline builds its spec once and only swaps the rows on a zoom.
    """

    frames: dict[str, pd.DataFrame]
    shape: tuple[Any, ...]
    draw: Callable[[dict[str, Source]], alt.Chart | alt.LayerChart]

    def chart(self) -> alt.Chart | alt.LayerChart:
        """The chart with its data inline."""
        return self.draw(dict(self.frames))


def empty_panel(text: str, view: View, height: int, title: str = "") -> Panel:
    """A titled panel that says why it has nothing to draw (centred text on the time axis)."""
    df = pd.DataFrame({"t_s": [(view.t0_s + view.t1_s) / 2], "y": [0.5], "text": [text]})

    def draw(d: dict[str, Source]) -> alt.Chart:
        chart = alt.Chart(d["note"]).mark_text(color="#888", fontSize=13).encode(
            x=time_x(view), y=alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[0, 1])), text="text:N"
        ).properties(height=height)
        return chart.properties(title=title) if title else chart

    return Panel({"note": df}, ("empty", text, title, height), draw)


def _with_cursor(panel: Panel, cursor_s: float | None, view: View) -> Panel:
    """The panel with a vertical rule at the replay cursor (unchanged when there is none)."""
    if cursor_s is None:
        return panel

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        rule = alt.Chart(d["cursor"]).mark_rule(color=COLORS["cursor"], strokeWidth=2, clip=True).encode(
            x=time_x(view), tooltip=["label:N"])
        return alt.layer(panel.draw(d), rule)

    cursor = pd.DataFrame({"t_s": [cursor_s], "label": ["replay cursor"]})
    return Panel({**panel.frames, "cursor": cursor}, (*panel.shape, "cursor"), draw)


def _multi_engine(df: pd.DataFrame) -> bool:
    return "engine_id" in df and df["engine_id"].nunique() > 1


def _band_color(multi: bool, default: str) -> dict[str, object]:
    """Fill and outline of a band: by engine only when the data holds more than one."""
    if multi:
        return {"color": alt.Color("engine_id:N", title="engine"), "stroke": alt.Stroke("engine_id:N", legend=None)}
    return {"color": alt.value(default), "stroke": alt.value(default)}


CAPACITY = pd.DataFrame({"value": [1.0]})


def kv_usage_panel(buckets: pd.DataFrame, view: View, num_blocks: int | None = None,
                   cursor_s: float | None = None, height: int = PANEL_HEIGHT) -> Panel:
    """KV cache usage (% of blocks) per pixel bucket as a band from its lowest to its highest
    value, with the 100 % capacity line."""
    df = derive.kv_band(buckets)
    if df.empty:
        return empty_panel("no engine steps in this range", view, height, "KV cache usage")
    cap = f" of {num_blocks:,} blocks" if num_blocks else ""
    multi = _multi_engine(df)

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        band = alt.Chart(d["band"]).mark_area(interpolate="step-after", strokeWidth=1.5, fillOpacity=0.3).encode(
            x=time_x(view),
            y=alt.Y("hi:Q", title="KV usage", axis=alt.Axis(format="%"), stack=None,
                    scale=alt.Scale(domain=[0, 1.05])),
            y2="lo:Q",
            **_band_color(multi, COLORS["kv"]),
        )
        capacity = alt.Chart(d["capacity"]).mark_rule(
            strokeDash=[4, 3], color=COLORS["total"]).encode(y="value:Q")
        return alt.layer(band, capacity).properties(title=f"KV cache usage{cap}", height=height)

    panel = Panel({"band": df, "capacity": CAPACITY}, ("kv", cap, multi, height), draw)
    return _with_cursor(panel, cursor_s, view)


def kv_usage_chart(buckets: pd.DataFrame, view: View, num_blocks: int | None = None,
                   cursor_s: float | None = None, height: int = PANEL_HEIGHT) -> alt.Chart | alt.LayerChart:
    """``kv_usage_panel`` with its data inline."""
    return kv_usage_panel(buckets, view, num_blocks, cursor_s, height).chart()


def queue_panel(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                height: int = PANEL_HEIGHT) -> Panel:
    """Running and waiting requests per pixel bucket, each a band from its lowest to its highest."""
    df = derive.queue_band(buckets)
    if df.empty:
        return empty_panel("no engine steps in this range", view, height, "Requests running and waiting")

    def draw(d: dict[str, Source]) -> alt.Chart:
        scale = alt.Scale(domain=["running", "waiting"], range=[COLORS["running"], COLORS["waiting"]])
        return alt.Chart(d["band"]).mark_area(interpolate="step-after", strokeWidth=1.5, fillOpacity=0.3).encode(
            x=time_x(view),
            y=alt.Y("hi:Q", title="requests", stack=None),
            y2="lo:Q",
            color=alt.Color("state:N", title=None, scale=scale,
                            legend=alt.Legend(orient="top", direction="horizontal")),
            stroke=alt.Stroke("state:N", scale=scale, legend=None),
            detail="engine_id:N",
        ).properties(title="Requests running and waiting", height=height)

    return _with_cursor(Panel({"band": df}, ("queue", height), draw), cursor_s, view)


def queue_chart(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                height: int = PANEL_HEIGHT) -> alt.Chart | alt.LayerChart:
    """``queue_panel`` with its data inline."""
    return queue_panel(buckets, view, cursor_s, height).chart()


def preemption_panel(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT, smooth_s: float = 0.0, recorded: bool = False) -> Panel:
    """Preemptions per second (area, averaged over ``smooth_s``) over a strip along the bottom that
    marks every bucket that preempted; ``recorded``: the counts are the engine core's, at each
    preemption's own time (else vLLM's step counters, which count a preemption when the request
    next returns output)."""
    rate = derive.rate_series(buckets, view, {"preemptions": "preemptions/s"}, smooth_s)
    if rate.empty:
        return empty_panel("no engine steps in this range", view, height, "Preemptions per second")

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        area = alt.Chart(d["rate"]).mark_area(interpolate="step", color=COLORS["preempt"],
                                              opacity=0.5).encode(
            x=time_x(view), y=alt.Y("per_s:Q", title="preemptions / s", axis=alt.Axis(format=",.4~f")),
        )
        strip = alt.Chart(d["strip"]).mark_rect(color=COLORS["preempt"], clip=True).encode(
            x=time_x(view), x2="t_end_s:Q", y=alt.value(height - STRIP_PX), y2=alt.value(height),
        )
        what = ("at the engine core's times; the strip along the bottom marks them" if recorded else
                "vLLM's step counters; the strip along the bottom marks the steps that counted them")
        return alt.layer(area, strip).properties(
            title=f"Preemptions per second{_smooth_note(smooth_s)} ({what})", height=height)

    panel = Panel({"rate": rate, "strip": derive.preemption_strip(buckets, view)},
                  ("preempt", smooth_s, height, recorded), draw)
    return _with_cursor(panel, cursor_s, view)


def prefix_hit_panel(buckets: pd.DataFrame, view: View, rolling_s: float,
                     cursor_s: float | None = None, height: int = PANEL_HEIGHT) -> Panel:
    """Prefix-cache hit rate per bucket (a thin segment across each bucket that queried, one line
    per run of adjacent ones) and over a rolling window (line)."""
    df = derive.hit_rate_series(buckets, view, rolling_s)
    if df.empty:
        return empty_panel("no prefix-cache queries in this range", view, height, "Prefix-cache hit rate")
    names = tuple(dict.fromkeys(df["series"]))
    first = df["series"] == names[0]
    per_bucket = derive.bucket_segments(df[first], view, "hit_rate_frac").assign(series=names[0])

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        def line(src: Source, width: float, opacity: float, detail: str, interpolate: str) -> alt.Chart:
            return alt.Chart(src).mark_line(strokeWidth=width, opacity=opacity, interpolate=interpolate).encode(
                x=time_x(view),
                y=alt.Y("hit_rate_frac:Q", title="hit rate", axis=alt.Axis(format="%"),
                        scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("series:N", title=None, scale=alt.Scale(
                    domain=list(names), range=[COLORS["hit"], COLORS["rolling"]]),
                    legend=alt.Legend(orient="top", direction="horizontal")),
                detail=detail,
            )
        return alt.layer(line(d["points"], 3, 0.7, "run:N", "step-after"),
                         line(d["rolling"], 2, 1, "engine_id:N", "linear")).properties(
            title="Prefix-cache hit rate (tokens hit / tokens queried)", height=height)

    panel = Panel({"points": per_bucket, "rolling": df[~first].reset_index(drop=True)},
                  ("hit", names, height), draw)
    return _with_cursor(panel, cursor_s, view)


def _smooth_note(smooth_s: float) -> str:
    return f", rolling {smooth_s:g} s" if smooth_s > 0 else ""


def throughput_panel(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT, smooth_s: float = 0.0) -> Panel:
    """Prompt and generation tokens per second (per pixel bucket, averaged over ``smooth_s``)."""
    df = derive.rate_series(buckets, view, {"prompt_tokens": "prompt", "generation_tokens": "generation"},
                            smooth_s)
    if df.empty:
        return empty_panel("no engine steps in this range", view, height,
                           "Throughput: prompt and generation tokens per second")

    def draw(d: dict[str, Source]) -> alt.Chart:
        return alt.Chart(d["line"]).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
            x=time_x(view),
            y=alt.Y("per_s:Q", title="tokens / s"),
            color=alt.Color("series:N", title=None, scale=alt.Scale(
                domain=["prompt", "generation"], range=[COLORS["prompt"], COLORS["generation"]]),
                legend=alt.Legend(orient="top", direction="horizontal")),
            detail="engine_id:N",
        ).properties(title=f"Throughput: prompt and generation tokens per second{_smooth_note(smooth_s)}",
                     height=height)

    return _with_cursor(Panel({"line": df}, ("tput", smooth_s, height), draw), cursor_s, view)


def throughput_chart(buckets: pd.DataFrame, view: View, cursor_s: float | None = None,
                     height: int = PANEL_HEIGHT, smooth_s: float = 0.0) -> alt.Chart | alt.LayerChart:
    """``throughput_panel`` with its data inline."""
    return throughput_panel(buckets, view, cursor_s, height, smooth_s).chart()


def navigator_panel(buckets: pd.DataFrame, whole: View, zoom: tuple[float, float] | None,
                    startup_end_s: float | None, view: View | None = None,
                    fallback: pd.DataFrame | None = None, what: str = "peak KV usage") -> Panel:
    """Whole-session strip (peak KV usage per bucket; ``fallback`` = ``t_s``, ``kv`` fractions,
    e.g. GPU memory used, for a session without steps) with a brush: drag to choose the range every
    panel shows. ``zoom`` is the brush's initial range (None: no brush yet); ``view`` is shaded as
    the range the panels show."""
    if buckets.empty:
        df = (fallback[["t_s", "kv"]].reset_index(drop=True) if fallback is not None and not fallback.empty
              else pd.DataFrame({"t_s": [whole.t0_s, whole.t1_s], "kv": [0.0, 0.0]}))
    else:
        df = pd.DataFrame({"t_s": buckets["t_lo_s"], "kv": buckets["kv_usage_frac_max"]})
        what = "peak KV usage"
    frames = {"kv": df}
    if startup_end_s is not None and startup_end_s > whole.t0_s:
        frames["startup"] = pd.DataFrame({"t_s": [whole.t0_s], "t_end_s": [startup_end_s],
                                          "label": ["engine start-up"]})
    if view is not None:
        frames["here"] = pd.DataFrame({"t_s": [view.t0_s], "t_end_s": [view.t1_s],
                                       "label": ["range shown below"]})
    value = (float(zoom[0]), float(zoom[1])) if zoom is not None else None

    def draw(d: dict[str, Source]) -> alt.LayerChart:
        if value is not None:
            brush = alt.selection_interval(name=ZOOM_PARAM, encodings=["x"], value={"x": list(value)})
        else:
            brush = alt.selection_interval(name=ZOOM_PARAM, encodings=["x"])
        layers: list[alt.Chart] = []
        if "startup" in d:
            layers.append(alt.Chart(d["startup"]).mark_rect(color=COLORS["startup"], opacity=0.6).encode(
                x=time_x(whole, title=None), x2="t_end_s:Q", tooltip=["label:N"]))
        layers.append(alt.Chart(d["kv"]).mark_area(interpolate="step-after", color=COLORS["kv"],
                                                   opacity=0.7).encode(
            x=time_x(whole, title=None),
            y=alt.Y("kv:Q", title="KV" if what == "peak KV usage" else "GPU",
                    axis=alt.Axis(format="%", tickCount=2),
                    scale=alt.Scale(domain=[0, 1])),
        ).add_params(brush, alt.selection_point(name=RESET_PARAM, on="dblclick", clear=False,
                                                 nearest=True, fields=["t_s"])))
        if "here" in d:  # on top of the area, so the shown range stays visible under any brush
            layers.append(alt.Chart(d["here"]).mark_rect(color="#f58518", opacity=0.3).encode(
                x=time_x(whole, title=None), x2="t_end_s:Q", tooltip=["label:N"]))
        title = alt.TitleParams(f"Whole session ({what}): drag to zoom every panel, double-click "
                                "to reset", fontSize=12, fontWeight="normal", color="#555")
        return alt.layer(*layers).properties(height=60, title=title)

    return Panel(frames, ("nav", whole.t0_s, whole.t1_s, value, tuple(frames), what), draw)


def compare_chart(df: pd.DataFrame, value: str, title: str, y_title: str, fmt: str | None = None,
                  height: int = 180) -> alt.Chart:
    """Sessions' series on time from their own start, colored by session."""
    axis = alt.Axis(format=fmt) if fmt else alt.Axis()
    two = df["session"].nunique() <= 2
    scale = alt.Scale(range=["#4c78a8", "#f58518"]) if two else alt.Scale(scheme="tableau10")
    return alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=alt.X("t_s:Q", title="time since first engine step (s)"),
        y=alt.Y(f"{value}:Q", title=y_title, axis=axis),
        color=alt.Color("session:N", title=None, legend=alt.Legend(orient="top", labelLimit=400),
                        scale=scale),
        tooltip=["session:N"],  # a line's tooltip is its first point's: only what the whole line shares
    ).properties(title=title, height=height)


def _bind_x_to_brush(chart: alt.Chart | alt.LayerChart) -> alt.Chart | alt.LayerChart:
    """Make a panel's time axis follow the navigator brush (zoom without a round trip); in place."""
    layers = chart.layer if isinstance(chart, alt.LayerChart) else [chart]
    for layer in layers:
        x = layer.encoding.x if layer.encoding is not alt.Undefined else alt.Undefined
        if isinstance(x, alt.X):
            x.scale = alt.Scale(domain={"param": ZOOM_PARAM, "encoding": "x"}, nice=False)
        elif isinstance(layer, alt.LayerChart):
            _bind_x_to_brush(layer)
    return chart


@dataclass
class LinkedTimeline:
    """The Timeline as one Vega-Lite view: navigator + panels, data in fixed-name datasets.

    The spec depends only on the panels' shapes, so it is built once and reused: a zoom changes
    the datasets only, and Streamlit swaps them into the live chart instead of rebuilding it.
    """

    template: dict[str, Any]
    datasets: dict[str, pd.DataFrame]
    _ipc: dict[str, bytes] | None = field(default=None, repr=False, compare=False)

    def spec(self) -> dict[str, Any]:
        """The Vega-Lite spec with the datasets attached as Arrow IPC bytes, which
        ``st.vega_lite_chart`` passes through as they are (converted once per chart)."""
        if self._ipc is None:
            self._ipc = {name: arrow_ipc(df) for name, df in self.datasets.items()}
        # A shallow copy: Streamlit copies the spec's top level before changing it, and only that.
        return {**self.template, "datasets": dict(self._ipc)}

    def rows(self) -> int:
        """Rows sent to the browser in all datasets together."""
        return sum(len(d) for d in self.datasets.values())


def arrow_ipc(df: pd.DataFrame) -> bytes:
    """A frame as Arrow IPC stream bytes, converted on this thread.

    pyarrow's default conversion starts a thread pool per frame once it has a few hundred rows,
    which costs more than the conversion itself for the Timeline's small frames.
    """
    table = pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
    sink = pa.BufferOutputStream()
    with pa.RecordBatchStreamWriter(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


_TEMPLATES: dict[tuple[Any, ...], dict[str, Any]] = {}
TEMPLATES_MAX = 32
"""Timeline specs remembered per shape (a zoom reuses the one it had)."""


def linked_timeline(navigator: Panel, panels: list[Panel], view: View,
                    shared: dict[str, pd.DataFrame] | None = None) -> LinkedTimeline:
    """The navigator and the panels stacked in one view: brushing the navigator zooms every panel
    at once in the browser, while the server re-reads the new range at full resolution.

    ``shared``: frames every panel draws the same rows of (the marks in view), by the key the panels
    hold them under; each is sent once (``all_<key>``) instead of once per panel.
    """
    shared = shared or {}
    datasets = {f"nav_{k}": v for k, v in navigator.frames.items()}
    datasets |= {f"all_{k}": v for k, v in shared.items()}
    # An invisible point at each end of the view: with no brush, the axis spans the view.
    datasets["all_anchor"] = pd.DataFrame({"t_s": [view.t0_s, view.t1_s]})
    for i, p in enumerate(panels):
        datasets |= {f"panel{i}_{k}": v for k, v in p.frames.items() if k not in shared}
    key = (navigator.shape, tuple(p.shape for p in panels), tuple(sorted(shared)))
    template = _TEMPLATES.get(key)
    if template is None:
        template = _timeline_template(navigator, panels, view, frozenset(shared))
        while len(_TEMPLATES) >= TEMPLATES_MAX:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        _TEMPLATES[key] = template
    return LinkedTimeline(template, datasets)


RAW = alt.DataFormat(parse=None)
"""Named datasets arrive as Arrow columns of their own types: without ``parse: null`` Vega-Lite adds
a ``toNumber`` formula per row of every line's data (an interpreted expression in Streamlit's
CSP-safe Vega), which each zoom pays for thousands of rows."""


def named(name: str) -> alt.NamedData:
    """A Timeline dataset by name, read as its Arrow types (no per-row parse)."""
    return alt.NamedData(name=name, format=RAW)


def _named(prefix: str, panel: Panel, shared: frozenset[str] = frozenset()) -> dict[str, Source]:
    return {k: named(f"all_{k}" if k in shared else f"{prefix}_{k}") for k in panel.frames}


def _timeline_template(navigator: Panel, panels: list[Panel], view: View,
                       shared: frozenset[str]) -> dict[str, Any]:
    """The Vega-Lite spec of the navigator over the panels, each panel's dict made on its own and
    stacked here: Altair's ``vconcat`` deep-copies every panel (seconds for a dozen layered
    panels); the selection parameters move to the top level as Altair would put them."""
    subs = [navigator.draw(_named("nav", navigator)).to_dict(validate=False)]
    for i, p in enumerate(panels):
        chart = p.draw(_named(f"panel{i}", p, shared))
        anchor = alt.Chart(named("all_anchor")).mark_point(opacity=0).encode(
            x=time_x(view))
        if isinstance(chart, alt.LayerChart):
            chart.layer = [*chart.layer, anchor]
        else:
            chart = alt.layer(chart, anchor)
        # The builders' output is validated in the tests; the template is built once per shape.
        subs.append(_bind_x_to_brush(chart).to_dict(validate=False))
    params: list[dict[str, Any]] = []
    for sub in subs:
        for key in ("$schema", "config", "datasets"):
            sub.pop(key, None)
        params += sub.pop("params", [])
    spec: dict[str, Any] = {
        "$schema": alt.SCHEMA_URL, "vconcat": subs, "params": params, "spacing": 22,
        "resolve": {"scale": {ch: "independent" for ch in ("x", "color", "stroke", "shape")}},
        # Fit the stacked panels to the page width (Streamlit leaves nested layers unfitted).
        "autosize": {"type": "fit-x", "contains": "padding"},
        # No ARIA attributes per point: thousands of them slow every redraw (axes keep theirs).
        "config": {"axisY": {"minExtent": 58}, "mark": {"aria": False}},
    }
    if not params:
        del spec["params"]
    return spec
