"""Marks (engine start, OOM, finding ranges, the focused finding) drawn on any time chart.

One helper for every time chart: ``with_marks`` layers them onto an Altair chart, ``panel_with_marks``
onto a Timeline panel (data in named datasets, so zooms keep the spec). Ranges are shaded behind
the data, moments are vertical rules on top; every mark is clipped to the plot.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts.panels import Panel, Source, time_x
from dashboard.data import marks as mk
from dashboard.data.steps import View

COLORS: dict[str, str] = {
    mk.ENGINE_START: "#6b6b6b", mk.OOM: "#d62728", mk.FINDING: "#ff9f1c", mk.FOCUS: "#ffd21f",
}
"""Colour per mark kind; kinds other pages register get ``OTHER``."""
OTHER = "#9467bd"

LEGEND_TEXT = ("Marks: grey dashed line = engine start, red dashed line = OOM, orange strip along the top = "
               "a finding's range (hover for its name), yellow shading = the finding you opened.")


def _split(marks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranges, moments): a range lasts longer than a millisecond."""
    if marks.empty:
        e = mk.empty().assign(color=pd.Series(dtype=str))
        return e, e.copy()
    marks = marks.assign(color=marks["kind"].map(lambda k: COLORS.get(k, OTHER)))
    long = (marks["t_end_s"] - marks["t_s"]) > 1e-3
    return marks[long].reset_index(drop=True), marks[~long].reset_index(drop=True)


def _fill() -> alt.Fill:
    """Marks are coloured through fill/stroke, never the color channel: the chart's own colour
    scale and legend stay untouched by them."""
    return alt.Fill("color:N", scale=None, legend=None)


def _stroke() -> alt.Stroke:
    return alt.Stroke("color:N", scale=None, legend=None)


def _range_layers(src: Source, view: View) -> list[alt.Chart]:
    """The focused finding shades the plot's full height; other ranges are a strip along its top."""
    def base() -> alt.Chart:
        return alt.Chart(src).encode(x=time_x(view), x2="t_end_s:Q", fill=_fill(),
                                     tooltip=[alt.Tooltip("label:N", title="mark")])
    focus = base().mark_rect(clip=True, opacity=0.28).transform_filter(alt.datum.kind == mk.FOCUS)
    strip = base().mark_rect(clip=True, opacity=0.85).encode(y=alt.value(0), y2=alt.value(5)).transform_filter(
        alt.datum.kind != mk.FOCUS)
    return [focus, strip]


def _moment_layer(src: Source, view: View) -> alt.Chart:
    return alt.Chart(src).mark_rule(clip=True, strokeWidth=2, strokeDash=[6, 3]).encode(
        x=time_x(view), stroke=_stroke(), tooltip=[alt.Tooltip("label:N", title="mark")])


def _around(chart: alt.Chart | alt.LayerChart, before: list[alt.Chart],
            after: list[alt.Chart]) -> alt.LayerChart:
    """One layer chart: ``before``, the chart (nested as it is: its own data, selections and
    resolutions stay with it), ``after``; the chart's title and size move to the outer layer (a
    nested layer may not size itself)."""
    props = {k: chart[k] for k in ("title", "height", "width") if chart[k] is not alt.Undefined}
    inner = chart.copy()
    for k in props:
        inner[k] = alt.Undefined
    return alt.layer(*before, inner, *after).properties(**props)


def with_marks(chart: alt.Chart | alt.LayerChart, marks: pd.DataFrame, view: View) -> alt.LayerChart:
    """``chart`` with ``marks`` (clipped to ``view``) behind and on top of it."""
    ranges, moments = _split(mk.in_view(marks, view.t0_s, view.t1_s))
    before = _range_layers(ranges, view) if not ranges.empty else []
    after = [_moment_layer(moments, view)] if not moments.empty else []
    return _around(chart, before, after)


def in_view_frames(marks: pd.DataFrame, view: View) -> dict[str, pd.DataFrame]:
    """``marks`` clipped to ``view`` as a panel's two mark frames (``mark_ranges``, ``mark_moments``):
    computed once per view, the same frames for every panel of a Timeline."""
    ranges, moments = _split(mk.in_view(marks, view.t0_s, view.t1_s))
    return {"mark_ranges": ranges, "mark_moments": moments}


def panel_with_marks(panel: Panel, frames: dict[str, pd.DataFrame], view: View) -> Panel:
    """A Timeline panel with the marks of ``in_view_frames`` layered in (two frames, always present,
    so the spec keeps its shape whether or not a range has marks)."""
    def draw(d: dict[str, Source]) -> alt.LayerChart:
        return _around(panel.draw(d), _range_layers(d["mark_ranges"], view),
                       [_moment_layer(d["mark_moments"], view)])

    return Panel({**panel.frames, **frames}, (*panel.shape, "marks"), draw)
