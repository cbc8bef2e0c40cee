"""Compare page: two sessions on time-from-first-step, their key numbers with verdicts only where
a difference is real, the settings that differ, and a prediction beside its re-run."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import sections, state
from dashboard.charts import panels as charts
from dashboard.data import compare, verify
from dashboard.data.reports import model_memo
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler.errors import KvscopeError
from profiler.units import escape_markdown

BUCKETS = 500
# Where a session uploaded from the browser is kept (a copy: the original is never written). A page's
# module-level string would be drawn by Streamlit's magic: comments here, not docstrings.
UPLOADS = Path(tempfile.gettempdir()) / "kvscope-uploads"


def _swap() -> None:
    a, b = st.session_state.get("compare_a"), st.session_state.get("compare_b")
    st.session_state["compare_a"], st.session_state["compare_b"] = b, a
    st.session_state[state.chosen_key("compare_a")], st.session_state[state.chosen_key("compare_b")] = b, a


def add_session_box() -> None:
    """Add a session file (a path on this machine, or an upload) to every picker; it becomes B."""
    with st.expander("Add a session (a re-run, another server's recording)", icon=":material/add:"):
        c = st.columns([4, 1])
        path = c[0].text_input("Path of a .kvscope file on this machine", key="compare_add_path",
                               placeholder="/path/to/rerun.kvscope")
        up = st.file_uploader("or upload one", type=["kvscope"], key="compare_upload")
        target: str | None = None
        if c[1].button("Add", icon=":material/add:", disabled=not path):
            target = path
        if up is not None:
            UPLOADS.mkdir(parents=True, exist_ok=True)
            dest = UPLOADS / Path(up.name).name
            if not dest.exists() or dest.stat().st_size != up.size:
                dest.write_bytes(up.getvalue())
            target = str(dest)
        if target:
            try:
                src = state.add_session(target)
            except (KvscopeError, sqlite3.DatabaseError, OSError) as exc:
                state.cannot_use(Path(target).name, exc)
            else:
                if st.session_state.get("compare_b") != src.label:
                    st.session_state.pop("compare_b", None)  # set before its widget is drawn again
                    st.session_state[state.chosen_key("compare_b")] = src.label
                    st.rerun()


st.title("Compare two sessions")
srcs = state.sources()
if len(srcs) < 2:
    st.info("Comparing needs at least two sessions: give two files to `kvscope ui`, or add one below.")
    add_session_box()
    st.stop()
current = state.current_source()
ia = srcs.index(current) if current in srcs else 0
left, mid, right = st.columns([10, 1.2, 10], vertical_alignment="bottom")
src_a = state.pick_session(left, key="compare_a", label="Session A", default_index=ia)
mid.button("", icon=":material/swap_horiz:", key="compare_swap", on_click=_swap, help="swap A and B",
           width="stretch")
src_b = state.pick_session(right, key="compare_b", label="Session B", default_index=(ia + 1) % len(srcs))
add_session_box()
if src_a is None or src_b is None:
    st.stop()
data_a = state.load_or_error(src_a)
data_b = state.load_or_error(src_b)
if data_a is None or data_b is None:
    st.stop()
if src_a.path == src_b.path:
    st.warning("A and B are the same session.")

sides = []
for src, data in ((src_a, data_a), (src_b, data_b)):
    with state.session_errors(src.label):
        sides.append(compare.side(data, state.report(data)[0], state.requests(data)))
if len(sides) < 2:
    st.stop()
side_a, side_b = sides
st.subheader("Key numbers")
st.caption(f"A: {escape_markdown(side_a.report['headline'])}  \nB: {escape_markdown(side_b.report['headline'])}")
deltas = compare.key_number_deltas(side_a, side_b)
why = deltas.attrs.get("why_no_verdict")
if why:
    st.info(f"No verdicts: the two sessions are not comparable ({escape_markdown(why)}).", icon=":material/info:")
shown = deltas if (deltas["B is"] != "").any() else deltas.drop(columns=["B is"])  # no empty verdict column
st.table(shown.rename(columns={"A": f"A: {src_a.label}", "B": f"B: {src_b.label}"}), hide_index=True)
st.caption("Verdicts only for outcomes and only beyond noise: latency percentiles whose bootstrap 95 % "
           f"intervals do not overlap, a hit rate moved by ≥ {compare.HIT_RATE_NOISE * 100:.0f} points, "
           f"counts and rates by ≥ {compare.REL_NOISE:.0%}. Serving time runs from the first to the last "
           "engine step (start-up excluded). Sizes and memory are shown without a verdict.")
state.csv_download(deltas, f"compare-{src_a.label}-vs-{src_b.label}", "Deltas CSV")
diff = compare.config_differences(data_a.engines, data_b.engines)
if not diff.empty:
    st.markdown("**Engine settings that differ**")
    st.table(diff, hide_index=True)
    state.csv_download(diff, f"compare-settings-{src_a.label}-vs-{src_b.label}", "Settings CSV")
sections.compare_serving(side_a.report, side_b.report, src_a.label, src_b.label)

# More than two sessions (servers, days): their key numbers side by side, and their series below.
others = [s for s in srcs if s.path not in (src_a.path, src_b.path)]
more_labels = st.multiselect("More sessions", [s.label for s in others], key="compare_more",
                             help="key numbers and series of more sessions beside A and B")
more: list[tuple[str, SessionData, compare.Side]] = []
for label in more_labels:
    src = next(s for s in others if s.label == label)
    data = state.load_or_error(src)
    if data is None:
        continue
    with state.session_errors(src.label):
        tag = f"{chr(ord('C') + len(more) % 24)}: {src.label}"
        more.append((tag, data, compare.side(data, state.report(data)[0], state.requests(data))))
if more:
    table = compare.key_numbers_table([(f"A: {src_a.label}", side_a), (f"B: {src_b.label}", side_b),
                                       *((tag, sd) for tag, _, sd in more)])
    st.markdown(f"**Key numbers of all {len(more) + 2} sessions**")
    st.table(table, hide_index=True)
    state.csv_download(table, f"compare-{len(more) + 2}-sessions", "All sessions CSV")

settings_differ = not diff.empty and bool(set(diff["setting"]) & {"num_gpu_blocks", "max_num_seqs"})
if settings_differ and not why:  # a re-run of the same workload at other settings
    try:
        model = model_memo(data_a.path)
    except KvscopeError as exc:
        st.caption(f"No prediction from A to put beside B: {escape_markdown(str(exc))}.")
    else:
        check = verify.rerun_check(model, side_b.report, side_b.requests)
        if check is not None:
            s_b, p_b, tbl = check
            st.markdown(f"**Predicted from A's requests at B's settings** ({escape_markdown(verify.settings_text(s_b))}) "
                        "**beside what B measured**")
            st.table(tbl, hide_index=True)
            st.caption("The prediction is the Simulate page's model run on A's own requests; B is the re-run. "
                       + (verify.times_note(model, p_b) or ""))

rolling_s = 1.0
series: dict[str, list[pd.DataFrame]] = {}
tagged = [(f"A: {src_a.label}", data_a), (f"B: {src_b.label}", data_b),
          *((tag, data) for tag, data, _ in more)]
for tag, data in tagged:
    f = data.steps.fine
    if f.empty:
        continue
    first_step = float(f["t_lo_s"].min())
    _, end = data.serving_range()
    view = View(first_step, max(end, first_step + 1e-3), BUCKETS)
    for k, v in compare.aligned_series(state.buckets(data, view), view, first_step, tag, rolling_s).items():
        series.setdefault(k, []).append(v)

st.subheader("Side by side (time from each session's first engine step)")
if not series:
    st.info("Neither session has engine steps: nothing to draw side by side.", icon=":material/info:")
    st.stop()
spec = [
    ("kv", "kv_usage_frac", "KV cache usage", "KV usage", "%"),
    ("waiting", "waiting", "Waiting requests", "requests", None),
    ("running", "running", "Running requests", "requests", None),
    ("generation", "per_s", f"Generation throughput (rolling {rolling_s:g} s)", "tokens / s", ",.0f"),
    ("hit_rate", "hit_rate_frac", f"Prefix-cache hit rate (rolling {rolling_s:g} s)", "hit rate", "%"),
]
cols = st.columns(2)
shown = 0
for k, value, title, y_title, fmt in spec:
    df = pd.concat(series.get(k, []), ignore_index=True)
    if df.empty:
        continue
    with cols[shown % 2]:
        state.show(charts.compare_chart(df, value, title, y_title, fmt), key=f"cmp-{k}")
    shown += 1
missing = [title for k, _, title, _, _ in spec if pd.concat(series.get(k, []) or [pd.DataFrame()]).empty]
if missing:
    st.caption("No data in either session for: " + ", ".join(missing) + ".")
