"""Timeline page: every per-step metric on one shared, zoomable time axis."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, state
from dashboard.downsample import minmax_frame
from dashboard.steps import View

BUCKETS = 400

data = state.current_session()
if data is not None:
    whole = View(0.0, max(data.duration_s, 1e-3), BUCKETS)
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

    st.title(f"Timeline · {data.name}")
    t0, t1 = state.get_zoom(data)
    view = View(t0, t1, BUCKETS)
    b = state.buckets(data, view)
    steps_in_view = int(b["n_steps"].sum()) if not b.empty else 0

    c = st.columns([3, 1.2, 1.2, 1.5])
    c[0].markdown(f"Showing **{t0:,.2f} – {t1:,.2f} s** ({t1 - t0:,.2f} s, {steps_in_view:,} engine steps, "
                  f"{view.width_s * 1000:,.2f} ms per bucket)")
    if c[1].button("Serving period", icon=":material/fit_screen:", help="From the first engine step on"):
        state.set_zoom(data, *state.serving_range(data))
        st.rerun()
    if c[2].button("Whole session", icon=":material/zoom_out_map:", help="Including engine start-up"):
        state.set_zoom(data, whole.t0_s, whole.t1_s)
        st.rerun()
    rolling_s = c[3].select_slider("Rolling window for rates (s)", options=[0.1, 0.5, 1, 5, 10, 30, 60],
                                   value=1, key="rolling_s")

    engine_start = data.events[data.events["kind"] == "engine_start"]["t_s"]
    startup_end = float(engine_start.min()) if not engine_start.empty else None
    nav = charts.navigator_panel(state.buckets(data, whole), whole, state.brush_value(data), startup_end,
                                 view)
    panels = []
    if data.has_gpu_samples:
        startup = data.startup_memory.iloc[0] if not data.startup_memory.empty else None
        for _, g in data.gpus.drop_duplicates("device_index").iterrows():
            dev = int(g["device_index"])
            s = data.gpu_samples[data.gpu_samples["device_index"] == dev]
            s = minmax_frame(s, "t_s", ["used_bytes"], t0, t1, BUCKETS)
            panels.append(charts.gpu_memory_panel(
                s, startup, g["total_bytes"], view, f"GPU {dev} memory ({g['name']}): NVML used, split by "
                "the start-up profile"))
    else:
        state.not_measured("GPU memory per device", data, "nvml")
    panels += [
        charts.kv_usage_panel(b, view, data.num_blocks()),
        charts.queue_panel(b, view),
        charts.preemption_panel(b, view, smooth_s=float(rolling_s)),
        charts.prefix_hit_panel(b, view, float(rolling_s)),
        charts.throughput_panel(b, view, smooth_s=float(rolling_s)),
    ]
    linked = charts.linked_timeline(nav, panels, view)
    st.vega_lite_chart(linked.spec(), key=nav_key, on_select=on_brush,
                       selection_mode=[charts.ZOOM_PARAM], width="stretch")
