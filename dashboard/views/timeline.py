"""Timeline page: every per-step metric on one shared, zoomable time axis."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.charts import panels as charts
from dashboard.charts import timeline as tl
from dashboard.data.steps import View
from profiler.units import escape_markdown

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        whole = tl.whole_view(data)
        nav_key = f"nav::{data.path}"

        # ?t0=&t1= (links from findings, shared URLs) set the zoom once.
        qp = st.query_params
        if "t0" in qp and "t1" in qp:
            try:
                state.set_zoom(data, float(qp["t0"]), float(qp["t1"]))
            except ValueError:
                st.warning("Ignored the t0/t1 in the address: they are not numbers.")
            del qp["t0"], qp["t1"]

        def on_brush() -> None:
            """Navigator brush moved: zoom every panel to it (a cleared brush shows the whole session)."""
            sel = st.session_state[nav_key].selection.get(charts.ZOOM_PARAM) or {}
            rng = sel.get("t_s")
            if rng and len(rng) == 2:
                state.set_zoom(data, float(rng[0]), float(rng[1]), by_brush=True)
            else:
                state.set_zoom(data, whole.t0_s, whole.t1_s)

        st.title(f"Timeline · {escape_markdown(data.name)}")
        t0, t1 = state.get_zoom(data)
        view = View(t0, t1, tl.BUCKETS)
        b = state.buckets(data, view)
        steps_in_view = int(b["n_steps"].sum()) if not b.empty else 0

        c = st.columns([3, 1.2, 1.2, 1.5])
        c[0].markdown(f"Showing **{t0:,.2f} – {t1:,.2f} s** ({t1 - t0:,.2f} s, {steps_in_view:,} engine steps, "
                      f"{view.width_s * 1000:,.2f} ms per bucket)")
        if c[1].button("Serving period", icon=":material/fit_screen:", help="From the first engine step on"):
            state.set_zoom(data, *data.serving_range())
            st.rerun()
        if c[2].button("Whole session", icon=":material/zoom_out_map:", help="Including engine start-up"):
            state.set_zoom(data, whole.t0_s, whole.t1_s)
            st.rerun()
        rolling_s = c[3].select_slider("Rolling window for rates (s)", options=tl.ROLLING_OPTIONS_S,
                                       value=tl.DEFAULT_ROLLING_S, key="rolling_s")

        if not data.has_gpu_samples:
            state.not_measured("GPU memory per device", data, "nvml")
        linked = tl.linked_chart(data, view, b, state.buckets(data, whole), state.brush_value(data),
                                 float(rolling_s))
        st.vega_lite_chart(linked.spec(), key=nav_key, on_select=on_brush,
                           selection_mode=[charts.ZOOM_PARAM], width="stretch")
