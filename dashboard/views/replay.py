"""Replay page: move a cursor through the session (play at a chosen speed, step, jump to the next
preemption / OOM / finding, click a chart) and see the engine state there."""

from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.charts import marks as chart_marks
from dashboard.charts import panels as charts
from dashboard.data import marks as mk
from dashboard.data import replay, tables
from dashboard.data.steps import View
from profiler import units
from profiler.units import escape_markdown

TICK_S = 0.5
BUCKETS = 400
# (comments, not docstrings: Streamlit's magic would draw a page's module-level string)
SPEEDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # session s per wall s: 60 = a minute a second
PICK = "pick"  # the click selection on the Replay charts (a click moves the cursor there)
JUMPS = {"preemption": "preemption", "OOM": mk.OOM, "finding": mk.FINDING, "engine start": mk.ENGINE_START}
# a preemption mark is a step that counted preemptions (one step can count several: the number
# beside it is of steps, not of the preemptions Overview counts)
JUMP_LABELS = {"preemption": "preempting step"}



def _count(value: object) -> str:
    """A step's count as shown: n/a when the step did not report it (NULL, NaN)."""
    v = units.finite_or_none(value)
    return units.NOT_MEASURED if v is None else f"{int(v):,}"

def clickable(chart: alt.LayerChart | alt.Chart, buckets: pd.DataFrame, view: View) -> alt.LayerChart:
    """``chart`` plus invisible points (one per bucket) that a click selects: the cursor moves there."""
    pts = pd.DataFrame({"t_s": buckets["t_lo_s"].to_numpy() if not buckets.empty else [view.t0_s]})
    pick = alt.selection_point(name=PICK, on="click", nearest=True, fields=["t_s"], empty=False)
    hit = alt.Chart(pts).mark_point(opacity=0, size=400).encode(x=charts.time_x(view), y=alt.value(60)).add_params(pick)
    return alt.layer(chart, hit)


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Replay · {escape_markdown(data.name)}")
        if not data.steps.total_steps:
            st.info("No engine step was recorded in this session: nothing to replay (the Timeline and Memory "
                    "pages show what it recorded).", icon=":material/info:")
            st.stop()
        rep, findings = state.report(data)
        _, hi = data.serving_range()
        lo = float(data.steps.fine["t_lo_s"].min())
        ckey = f"cursor::{data.path}"
        if ckey not in st.session_state:
            st.session_state[ckey] = float(lo)
        playing_key = "replay_playing"
        tick_key = "replay_tick_wall_s"
        playing = bool(st.session_state.get(playing_key, False))
        marks = mk.session_marks(data, findings, state.get_focus(data))
        pre = state.preempting_steps(data)
        jump_marks = pd.concat([marks, pd.DataFrame({"t_s": pre["t_s"], "t_end_s": pre["t_s"], "kind": "preemption",
                                                     "label": "", "code": ""})], ignore_index=True)

        def move_to(t_s: float) -> None:
            """Put the cursor at ``t_s`` (clamped to the serving period)."""
            st.session_state[ckey] = float(min(max(t_s, lo), hi))

        controls = st.columns([1, 1, 1.2, 1, 3])
        speed = controls[4].select_slider("Speed (session seconds per second)", SPEEDS, value=1.0,
                                          key="replay_speed", format_func=lambda v: f"{v:g}×")

        def on_pick() -> None:
            """A click on a chart: the cursor goes to the clicked time."""
            for key in ("replay-kv", "replay-queue"):
                sel = st.session_state.get(key)
                picked = (sel.selection.get(PICK) if sel is not None else None) or []
                if picked and "t_s" in picked[0]:
                    move_to(float(picked[0]["t_s"]))
                    st.session_state[playing_key] = False

        @st.fragment(run_every=TICK_S if playing else None)
        def player() -> None:
            """Cursor, state at the cursor and charts; advances by itself while playing, by the wall
            time since the last tick (a slow redraw does not slow the playback)."""
            now = time.monotonic()
            if st.session_state.get(playing_key):
                last = st.session_state.get(tick_key) or now
                nxt = st.session_state[ckey] + speed * max(now - last, 0.0)
                if nxt >= hi:
                    nxt = hi
                    st.session_state[playing_key] = False
                st.session_state[ckey] = nxt
            st.session_state[tick_key] = now
            cursor = st.slider("Cursor: time since session start (s)", float(lo), float(max(hi, lo + 1e-3)),
                               key=ckey, step=max((hi - lo) / 10000, 1e-4), format="%.4f")
            around = data.steps_around(cursor, before=2, after=1)
            cs = replay.cursor_state(around, cursor, data.num_blocks())
            if cs.t_s is None:
                st.info("No engine step yet at this time: move the cursor right.")
            n = cs.now
            blocks = data.num_blocks()
            m = st.columns([1.5, 1, 1, 1, 1.2, 1])  # a step time such as "126.9181 s" needs the room
            m[0].metric("Step time", "n/a" if cs.t_s is None else f"{cs.t_s:.4f} s",
                        help="the engine step at or before the cursor")
            m[1].metric("Running", _count(n.get("running")), delta=_delta(cs, "running"))
            m[2].metric("Waiting", _count(n.get("waiting")), delta=_delta(cs, "waiting"), delta_color="inverse")
            m[3].metric("KV usage", units.fmt_pct(n.get("kv_usage_frac")),
                        delta=_delta(cs, "kv_blocks_used", " blocks"), delta_color="off")
            # an attach session's first row is the counters' baseline: no count (NULL), not 0
            m[4].metric("Preempted this step", _count(n.get("preemptions")))
            mem = _memory_at(cursor)
            m[5].metric("GPU memory", mem or "n/a", help="NVML used memory of the fullest device at the cursor"
                        if mem else "not measured on this machine (no NVML)")
            left, right = st.columns([1, 1])
            with left:
                if blocks:
                    kvu = n.get("kv_blocks_used")
                    used = int(kvu) if kvu is not None and kvu == kvu else 0
                    st.altair_chart(replay.kv_blocks_picture(used, blocks), key="replay-blocks", width="content")
                    st.caption("Used blocks from vLLM's KV usage at this step; the fill order is illustrative.")
            with right:
                st.markdown("**What changed since the previous step**"
                            + (f" ({(cs.t_s - cs.prev_t_s) * 1000:.2f} ms earlier)"
                               if cs.prev_t_s is not None and cs.t_s is not None else ""))
                if cs.previous is None:
                    st.caption("This is the session's first recorded step: nothing before it to compare "
                               "with." if cs.t_s is not None else "No engine step at the cursor yet.")
                else:
                    ch = replay.changes(cs)
                    st.dataframe(tables.shown(ch, {c: _num for c in ("previous", "now", "change")},
                                              keep=("previous", "now", "change")),
                                 hide_index=True, width="stretch")
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
            kv_chart = chart_marks.with_marks(charts.kv_usage_chart(b, view, blocks, cursor_s=cursor, height=130),
                                              marks, view)
            q_chart = chart_marks.with_marks(charts.queue_chart(b, view, cursor_s=cursor, height=130), marks, view)
            for key, chart in (("replay-kv", kv_chart), ("replay-queue", q_chart)):
                state.show(clickable(chart, b, view), key=key, on_select=on_pick, selection_mode=[PICK])
            st.caption("Click a chart to move the cursor there. " + chart_marks.LEGEND_TEXT)

        def _num(v: float) -> str:
            return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}"

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

        def jump(direction: int) -> None:
            """Jump to the next (1) or previous (-1) mark of the chosen kind."""
            kind = JUMPS[st.session_state.get("replay_jump_kind") or "preemption"]
            target = mk.next_mark(jump_marks, st.session_state[ckey], direction, {kind})
            if target is not None:
                move_to(target)
            st.session_state[playing_key] = False

        def play() -> None:
            st.session_state[playing_key] = True
            st.session_state[tick_key] = time.monotonic()

        controls[0].button("Play", icon=":material/play_arrow:", disabled=playing, on_click=play)
        controls[1].button("Pause", icon=":material/pause:", disabled=not playing,
                           on_click=lambda: st.session_state.__setitem__(playing_key, False))
        controls[2].button("Step back", icon=":material/skip_previous:", on_click=step, args=(-1,),
                           help="previous engine step")
        controls[3].button("Step", icon=":material/skip_next:", on_click=step, args=(1,), help="next engine step")
        counts = {k: int((jump_marks["kind"] == v).sum()) for k, v in JUMPS.items()}
        j = st.columns([4.5, 1, 1, 1.5])  # room for "preempting step (14)  finding (2)  engine start (1)"
        j[0].segmented_control("Jump to", [k for k in JUMPS if counts[k]], key="replay_jump_kind",
                               default=next((k for k in JUMPS if counts[k]), None),
                               format_func=lambda k: f"{JUMP_LABELS.get(k, k)} ({counts[k]:,})")
        j[1].button("Previous", icon=":material/first_page:", on_click=jump, args=(-1,),
                    disabled=not any(counts.values()))
        j[2].button("Next", icon=":material/last_page:", on_click=jump, args=(1,), disabled=not any(counts.values()))
        player()
