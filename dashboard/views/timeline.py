"""Timeline page: every per-step metric and each GPU's memory on one shared, zoomable time axis,
with engine start, OOMs and finding ranges marked on every panel."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import marks as chart_marks
from dashboard.charts import panels as charts
from dashboard.charts import timeline as tl
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler.units import escape_markdown

SCROLL_TO_FOCUS_JS = """<script>
(() => {  // once Vega has drawn the timeline, scroll its first panel (the finding's) to the top
  const started = Date.now();
  const go = () => {
    const chart = document.querySelector("[data-testid='stMain'] [data-testid='stVegaLiteChart']");
    const titles = chart ? chart.querySelectorAll("g.role-title") : [];
    if (titles.length >= 2) {
      titles[1].scrollIntoView({block: "start"});
      const main = document.querySelector("[data-testid='stMain']");
      if (main) main.scrollBy(0, -70);  // below Streamlit's header bar
      return;
    }
    if (Date.now() - started < 30000) setTimeout(go, 200);
  };
  go();
})();
</script>"""  # scrolls to the panel after the navigator: with a finding opened, the one that shows it


LINKED_KEY = "kvscope_timeline_linked"  # st.session_state: the last linked chart and what it was drawn from


def _linked(data: SessionData, view: View, b: pd.DataFrame, rolling_s: float,
            analysis: tuple[dict[str, Any], list[dict[str, Any]]] | None,
            focus: tuple[float, float, str] | None) -> charts.LinkedTimeline:
    """The linked chart for this view, reused when nothing it is drawn from changed: the chart
    sends its brush again after a redraw (the same zoom), and that rerun rebuilds nothing."""
    brush = state.brush_value(data)
    key = (view, brush, rolling_s, focus)
    memo = st.session_state.get(LINKED_KEY)
    if memo is not None and memo[0] is data and memo[1] is analysis and memo[2] == key:
        return memo[3]
    linked = tl.linked_chart(data, view, b, state.buckets(data, tl.whole_view(data)), brush, rolling_s,
                             analysis=analysis, focus=focus)
    st.session_state[LINKED_KEY] = (data, analysis, key, linked)
    return linked


@st.fragment
def zoomable(data: SessionData, analysis: tuple[dict[str, Any], list[dict[str, Any]]] | None,
             focus: tuple[float, float, str] | None, pending: bool) -> None:
    """The controls and the linked chart: a brush reruns only this part of the page (no page
    config, navigation, title or session picker re-sent), and keeps the address up to date."""
    with state.session_errors(data.name):
        whole = tl.whole_view(data)
        nav_key = f"nav::{data.path}"

        def on_brush() -> None:
            """Navigator brush moved: zoom every panel to it; a cleared brush or a double-click
            (``RESET_PARAM``) shows the whole session."""
            sel = st.session_state[nav_key].selection.get(charts.ZOOM_PARAM) or {}
            rng = sel.get("t_s")
            if rng and len(rng) == 2:
                state.set_zoom(data, float(rng[0]), float(rng[1]), by_brush=True)
            else:
                state.set_zoom(data, whole.t0_s, whole.t1_s)

        t0, t1 = state.get_zoom(data)
        view = View(t0, t1, tl.BUCKETS)
        b = state.buckets(data, view)
        steps_in_view = int(b["n_steps"].sum()) if not b.empty else 0

        c = st.columns([3, 1.2, 1.2, 1.5])
        c[0].markdown(f"Showing **{t0:,.2f} – {t1:,.2f} s** ({t1 - t0:,.2f} s, {steps_in_view:,} engine steps, "
                      f"{view.width_s * 1000:,.2f} ms per bucket)")
        if c[1].button("Serving period", icon=":material/fit_screen:", help="From the first engine step on",
                       disabled=not data.steps.total_steps):
            state.set_zoom(data, *data.serving_range())
            st.rerun()
        if c[2].button("Whole session", icon=":material/zoom_out_map:", help="Including engine start-up"):
            state.set_zoom(data, whole.t0_s, whole.t1_s)
            st.rerun()
        rolling_s = tl.DEFAULT_ROLLING_S
        if data.steps.total_steps:
            rolling_s = c[3].select_slider("Rolling window for rates (s)", options=tl.ROLLING_OPTIONS_S,
                                           value=tl.DEFAULT_ROLLING_S, key="rolling_s")
        if focus is not None:
            f = st.columns([5, 1.2])
            panel = tl.PANEL_NAMES.get(tl.focus_panel_key(focus[2]) or "", "")
            f[0].markdown(f":orange[**{escape_markdown(focus[2])}**] {focus[0]:,.2f}–{focus[1]:,.2f} s is "
                          "highlighted in yellow on every panel"
                          + (f"; the {panel} panel that shows it is first." if panel else "."))
            if f[1].button("Clear highlight", icon=":material/close:"):
                state.set_focus(data, None)
                st.rerun()
        if not data.steps.total_steps:
            st.caption("No engine step was recorded in this session: only GPU memory is drawn.")
        if not data.has_gpu_samples:
            state.not_measured("GPU memory per device", data, "nvml")
        if pending:
            st.info("This session is being diagnosed (below the chart): its findings' ranges are "
                    "marked when that is done.", icon=":material/hourglass_top:")
        linked = _linked(data, view, b, float(rolling_s), analysis, focus)
        st.caption(chart_marks.LEGEND_TEXT + " Double-click the top strip to show the whole session.")
        st.vega_lite_chart(linked.spec(), key=nav_key, on_select=on_brush,
                           selection_mode=[charts.ZOOM_PARAM, charts.RESET_PARAM], width="stretch")
        if focus is not None and st.session_state.pop(state.SCROLL_KEY, False):
            st.html(SCROLL_TO_FOCUS_JS, unsafe_allow_javascript=True)
        state.write_link(data)


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        # A large session being diagnosed (once, stored): the chart first, without finding marks.
        pending = state.report_pending(data.path)
        analysis = None if pending else state.report(data)
        st.title(f"Timeline · {escape_markdown(data.name)}")
        if not data.steps.total_steps and not data.has_gpu_samples:
            st.info("Nothing to draw over time: this session has neither engine steps nor GPU samples "
                    "(no NVML on the machine that recorded it).", icon=":material/info:")
            st.stop()
        if state.page_changed() and st.session_state.get(state.zoom_key(data)):
            # back from another page after a zoom: draw the brush where the zoom is
            state.set_zoom(data, *state.get_zoom(data))
        zoomable(data, analysis, state.get_focus(data), pending)
        if pending:  # wait for the diagnosis (a spinner says so), then draw it with the findings
            state.report(data)
            st.rerun()
