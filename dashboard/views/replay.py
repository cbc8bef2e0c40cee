"""Replay page: move a cursor through the session (play, pause, speed, step) and see the engine state."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.charts import panels as charts
from dashboard.data import replay
from dashboard.data.steps import View
from profiler import units
from profiler.units import escape_markdown

TICK_S = 0.5
BUCKETS = 400

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Replay · {escape_markdown(data.name)}")
        _, hi = data.serving_range()
        lo = float(data.steps.fine["t_lo_s"].min()) if data.steps.total_steps else 0.0
        ckey = f"cursor::{data.path}"
        if ckey not in st.session_state:
            st.session_state[ckey] = float(lo)
        playing_key = "replay_playing"
        playing = bool(st.session_state.get(playing_key, False))

        def move_to(t_s: float) -> None:
            """Put the cursor at ``t_s`` (clamped to the serving period)."""
            st.session_state[ckey] = float(min(max(t_s, lo), hi))

        controls = st.columns([1, 1, 1.3, 1, 3])
        speed = controls[4].select_slider("Speed (session s per wall s)", [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0],
                                          value=0.1, key="replay_speed")

        @st.fragment(run_every=TICK_S if playing else None)
        def player() -> None:
            """Cursor, state at the cursor and charts; advances by itself while playing."""
            if st.session_state.get(playing_key):
                nxt = st.session_state[ckey] + speed * TICK_S
                if nxt >= hi:
                    nxt = hi
                    st.session_state[playing_key] = False
                st.session_state[ckey] = nxt
            cursor = st.slider("Cursor: time since session start (s)", float(lo), float(max(hi, lo + 1e-3)),
                               key=ckey, step=max((hi - lo) / 10000, 1e-4), format="%.4f")
            around = data.steps_around(cursor, before=2, after=1)
            cs = replay.cursor_state(around, cursor, data.num_blocks())
            if cs.t_s is None:
                st.info("No engine step yet at this time: move the cursor right.")
            n = cs.now
            blocks = data.num_blocks()
            m = st.columns(6)
            m[0].metric("Step time", "—" if cs.t_s is None else f"{cs.t_s:.4f} s", help="the engine step at or before the cursor")
            # a value the step did not carry (NULL: NaN here) reads n/a, not a crash or a 0
            m[1].metric("Running", units.fmt(n.get("running"), "{:.0f}"), delta=_delta(cs, "running"))
            m[2].metric("Waiting", units.fmt(n.get("waiting"), "{:.0f}"), delta=_delta(cs, "waiting"),
                        delta_color="inverse")
            m[3].metric("KV usage", units.fmt_pct(n.get("kv_usage_frac")),
                        delta=_delta(cs, "kv_blocks_used", " blocks"), delta_color="off")
            m[4].metric("Preempted this step", units.fmt(n.get("preemptions"), "{:.0f}"))
            mem = _memory_at(cursor)
            m[5].metric("GPU memory", mem or "—", help="NVML used memory of the fullest device at the cursor"
                        if mem else "not measured on this machine (no NVML)")
            left, right = st.columns([1, 1])
            with left:
                if blocks:
                    used = int(n.get("kv_blocks_used", 0)) if n.get("kv_blocks_used") == n.get("kv_blocks_used") else 0
                    st.altair_chart(replay.kv_blocks_picture(used, blocks), key="replay-blocks",
                                    width="content")
                    st.caption("Used blocks from vLLM's KV usage at this step; the fill order is illustrative.")
            with right:
                st.markdown("**What changed since the previous step**"
                            + (f" ({(cs.t_s - cs.prev_t_s) * 1000:.2f} ms earlier)"
                               if cs.prev_t_s is not None and cs.t_s is not None else ""))
                ch = replay.changes(cs)
                st.dataframe(ch, hide_index=True, width="stretch")
                state.csv_download(ch, f"{data.name}-step-{cs.t_s or 0:.4f}", "Changes CSV")
                reqs = state.requests(data)
                if cs.prev_t_s is not None and cs.t_s is not None and not reqs.empty:
                    done = reqs[(reqs["t_finished_s"] > cs.prev_t_s) & (reqs["t_finished_s"] <= cs.t_s)]
                    if not done.empty:
                        st.caption("Finished at this step: " + escape_markdown(
                            ", ".join(done["request_id"].astype(str).head(12))))
            z0, z1 = state.get_zoom(data)
            if not (z0 <= cursor <= z1):
                w = (z1 - z0) / 2
                z0, z1 = cursor - w, cursor + w
            view = View(z0, z1, BUCKETS)
            b = state.buckets(data, view)
            state.show(charts.kv_usage_chart(b, view, blocks, cursor_s=cursor, height=130), key="replay-kv")
            state.show(charts.queue_chart(b, view, cursor_s=cursor, height=130), key="replay-queue")

        def _delta(cs: replay.CursorState, key: str, unit: str = "") -> str | None:
            if cs.previous is None:
                return None
            d = cs.now.get(key, 0) - cs.previous.get(key, 0)
            return None if d != d else f"{d:+.0f}{unit}"

        def _memory_at(t_s: float) -> str | None:
            if not data.has_gpu_samples:
                return None
            s = data.gpu_samples[data.gpu_samples["t_s"] <= t_s]
            if s.empty:
                return None
            last = s.groupby("device_index").tail(1)
            return f"{last['used_bytes'].max() / 2**30:.1f} GiB"

        def step(direction: int) -> None:
            """Jump to the next (1) or previous (-1) engine step."""
            t = st.session_state[ckey]
            around = data.steps_around(t, before=2, after=1)
            cs = replay.cursor_state(around, t, data.num_blocks())
            target = cs.next_t_s if direction > 0 else cs.prev_t_s
            if target is not None:
                move_to(target)
            st.session_state[playing_key] = False

        controls[0].button("Play", icon=":material/play_arrow:", disabled=playing,
                           on_click=lambda: st.session_state.__setitem__(playing_key, True))
        controls[1].button("Pause", icon=":material/pause:", disabled=not playing,
                           on_click=lambda: st.session_state.__setitem__(playing_key, False))
        controls[2].button("Step back", icon=":material/skip_previous:", on_click=step, args=(-1,),
                           help="previous engine step")
        controls[3].button("Step", icon=":material/skip_next:", on_click=step, args=(1,),
                           help="next engine step")
        player()
