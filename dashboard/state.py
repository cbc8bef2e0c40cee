"""Streamlit glue shared by the pages: session picker, cached loading, zoom state, common widgets.

Pages (``dashboard/views/*.py``, including other helpers' pages) get the chosen session with::

    from dashboard import state
    data = state.current_session()      # SessionData, or None after an st.error was shown
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data.reports import kv_events_memo, report_memo, report_pending, whatif_memo
from dashboard.data.session import SessionData, file_signature, load_session_memo
from dashboard.data.sources import SessionSource, discover_sessions
from dashboard.data.steps import View
from profiler.analysis.kv_events import KvEventSummary
from profiler.analysis.whatif import WhatIf
from profiler.errors import KvscopeError
from profiler.units import escape_markdown

SESSION_KEY = "kvscope_session"
"""st.session_state key (and ``?session=`` query parameter) holding the selected session label."""


def chosen_key(key: str) -> str:
    """The plain (non-widget) key that keeps a picker's choice across ``st.switch_page``."""
    return f"{key}::chosen"


CHOSEN_KEY = chosen_key(SESSION_KEY)

PAGE_KEY = "kvscope_page"
PAGE_CHANGED_KEY = "kvscope_page_changed"
SCROLL_KEY = "kvscope_scroll_to_focus"
"""Set when a finding is opened (button or link): the Timeline scrolls to its panel once."""


@st.cache_data(show_spinner=False, max_entries=16)
def _requests(path: str, size: int, mtime: float) -> pd.DataFrame:
    return load_session_memo(path).requests()


@st.cache_data(show_spinner=False, max_entries=16)
def _preempting(path: str, size: int, mtime: float) -> pd.DataFrame:
    return load_session_memo(path).preempting_steps()


@st.cache_data(show_spinner=False, max_entries=256)
def _buckets(path: str, size: int, mtime: float, t0_s: float, t1_s: float, n: int) -> pd.DataFrame:
    return load_session_memo(path).buckets(View(t0_s, t1_s, n))


def load(path: str | Path) -> SessionData:
    """The session at ``path``, remembered per (path, size, mtime); raises SessionFormatError."""
    return load_session_memo(path)


def requests(data: SessionData) -> pd.DataFrame:
    """Finished requests of a loaded session (cached)."""
    return _requests(*file_signature(data.path))


def preempting_steps(data: SessionData) -> pd.DataFrame:
    """Steps that preempted at least one request (cached)."""
    return _preempting(*file_signature(data.path))


def buckets(data: SessionData, view: View) -> pd.DataFrame:
    """Steps of ``view`` per pixel bucket (cached per view)."""
    return _buckets(*file_signature(data.path), round(view.t0_s, 6), round(view.t1_s, 6), view.buckets)


def report(data: SessionData) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``profiler.analysis.report.build_report`` of the session and its diagnosis findings (cached);
    while a large session is being diagnosed (``report_pending``) a spinner says so."""
    if not report_pending(data.path):
        return report_memo(data.path)
    with st.spinner(diagnosing_text(data)):
        return report_memo(data.path)


def diagnosing_text(data: SessionData) -> str:
    """What the page waits for while the session's report is being built (``report_pending``)."""
    return (f"Diagnosing {data.steps.total_steps:,} engine steps of {data.name} (about 5 s per "
            "million; once: the report is stored in the session, or the stored one was made by "
            "another kvscope version)…")


def whatif(data: SessionData) -> WhatIf:
    """The session's what-if model (cached); ValueError when the session has no trace for it."""
    return whatif_memo(data.path)


def kv_events(data: SessionData) -> KvEventSummary:
    """The session's KV-event summary (cached)."""
    return kv_events_memo(data.path)


EXTRA_KEY = "kvscope_extra_sessions"
"""Session files added from inside the dashboard (Compare's "add a session"), this browser session."""


def sources() -> list[SessionSource]:
    """Sessions offered in the picker: discovered ones, then those added in the dashboard."""
    found = discover_sessions()
    known = {s.path.resolve() for s in found}
    labels = {s.label for s in found}
    for raw in st.session_state.get(EXTRA_KEY, []):
        p = Path(raw)
        if p.resolve() in known:
            continue
        label = p.stem if p.stem not in labels else f"{p.stem} ({p.parent.name})"
        found.append(SessionSource(p, f"{label} · added", "added"))
        known.add(p.resolve())
        labels.add(label)
    return found


def add_session(path: str | Path) -> SessionSource:
    """Offer one more session file in every picker (checked: it must open); raises KvscopeError,
    sqlite3.DatabaseError or OSError with the reason."""
    p = Path(path).expanduser().resolve()
    if not (p.is_file() or p.is_dir()):
        raise OSError(2, f"no such session file: {p}")
    load(p)
    extra = list(st.session_state.get(EXTRA_KEY, []))
    if str(p) not in extra:
        extra.append(str(p))
    st.session_state[EXTRA_KEY] = extra
    return next(s for s in sources() if s.path.resolve() == p)


def headline(src: SessionSource) -> str:
    """The session's one line (``profiler.analysis.headline``), or why it cannot be read."""
    try:
        if report_pending(src.path):
            return "being diagnosed (once; stored in the session)"
        return str(report_memo(src.path)[0].get("headline") or "")
    except (KvscopeError, sqlite3.DatabaseError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return "cannot open: " + (why.splitlines() or [type(exc).__name__])[0]


KEPT_WIDGETS = frozenset({
    "rolling_s", "kv_unit", "kv_episode_gap_s",
    "hist_latency_metric", "replay_jump_kind", "replay_speed", "live_refresh_s", "live_window_min",
    "live_follow"})
KEPT_PREFIXES = ("cursor::", "sim::", "sim-mem::", "prompt_threshold::", "preempted-req::")
"""Widget keys (value widgets only: a button's state cannot be set) whose choice outlives a page;
a choice within one session's range (a prompt length, a request) is keyed by that session."""


def keep_widget_state() -> None:
    """Streamlit drops a widget's state in a run that does not draw it (another page, after
    ``st.switch_page`` too): re-assigning the kept keys at the top of every run keeps the choice."""
    for k in list(st.session_state.keys()):
        if k in KEPT_WIDGETS or (isinstance(k, str) and k.startswith(KEPT_PREFIXES)):
            st.session_state[k] = st.session_state[k]


def picker_text(src: SessionSource) -> str:
    """What the picker shows for a session: its name and its one line."""
    line = headline(src)
    return f"{src.label} — {line}" if line else src.label


def pick_session(where: Any = None, key: str = SESSION_KEY, label: str = "Session",
                 default_index: int = 0) -> SessionSource | None:
    """A selectbox of the available sessions (in the sidebar by default); None when there are none."""
    where = where if where is not None else st.sidebar
    srcs = sources()
    if not srcs:
        where.warning("No sessions found. Run `kvscope ui SESSION.kvscope`, or put sessions in "
                      "~/.kvscope/sessions (or $KVSCOPE_SESSIONS_DIR).")
        return None
    labels = [s.label for s in srcs]
    if key not in st.session_state:
        # st.switch_page drops a picker's widget state: the last choice is also kept apart
        wanted = st.session_state.get(chosen_key(key))
        if wanted is None and key == SESSION_KEY:
            wanted = st.query_params.get("session")
        st.session_state[key] = wanted if wanted in labels else labels[min(default_index, len(labels) - 1)]
    if st.session_state.get(key) not in labels:
        st.session_state[key] = labels[min(default_index, len(labels) - 1)]
    texts = {s.label: picker_text(s) for s in srcs}
    chosen = where.selectbox(label, labels, key=key, format_func=lambda lb: texts.get(lb, lb),
                             help="Session files: the ones given to `kvscope ui`, else the bundled "
                             "ones and ~/.kvscope/sessions; the same list and lines as the Sessions page")
    st.session_state[chosen_key(key)] = chosen
    return srcs[labels.index(chosen)]


def current_source() -> SessionSource | None:
    """The session chosen in the sidebar picker."""
    srcs = sources()
    label = st.session_state.get(SESSION_KEY)
    for s in srcs:
        if s.label == label:
            return s
    return srcs[0] if srcs else None


def current_session() -> SessionData | None:
    """Load the chosen session (applying a link's zoom/focus once); on a bad file show one st.error
    line and return None."""
    src = current_source()
    if src is None:
        st.info("No session selected.")
        return None
    data = load_or_error(src)
    if data is not None:
        apply_link(data)
    return data


def load_or_error(src: SessionSource) -> SessionData | None:
    """Load ``src`` or show why not (one line) and return None."""
    with session_errors(src.label):
        return load(src.path)
    return None


def cannot_use(label: str, exc: BaseException) -> None:
    """The one message a page shows for a session it cannot use (the file's text as text)."""
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc)
    elif isinstance(exc, sqlite3.DatabaseError):
        why = f"damaged session file ({exc})"
    else:
        why = str(exc)
    first = (why.splitlines() or [type(exc).__name__])[0]
    st.error(f"Cannot open **{escape_markdown(label)}**: {escape_markdown(first)}",
             icon=":material/error:")


@contextmanager
def session_errors(label: str) -> Iterator[None]:
    """Run a page's body; a session it cannot use (``KvscopeError``, an SQLite or OS error) shows
    one ``st.error`` line instead of an exception, and the other pages and sessions keep working."""
    try:
        yield
    except (KvscopeError, sqlite3.DatabaseError, OSError) as exc:
        cannot_use(label, exc)


def not_measured(what: str, data: SessionData, topic: str = "nvml") -> None:
    """Say plainly that a metric was not measured (instead of drawing an empty chart)."""
    reason = data.notes.get(topic)
    if topic == "nvml":
        text = f"{what}: not measured on this machine (no NVML)."
    else:
        text = f"{what}: not measured on this machine (no CUDA allocator)."
    st.info(text + (f" Recorder said: _{escape_markdown(reason)}_" if reason else ""),
            icon=":material/info:")


def show(chart: Any, key: str, **kwargs: Any) -> Any:
    """Draw an Altair chart across the page width, keeping each panel's own height.

    Marks carry no per-point ARIA attributes: with hundreds of points each they only slow the
    drawing (axes and titles keep theirs). Both are set on ``chart`` itself (the pages pass one
    they just built): Altair's ``properties``/``configure_mark`` copy a layered chart whole, a
    fifth of the first chart's time on a fresh server."""
    chart.autosize = alt.AutoSizeParams(type="fit-x", contains="padding")
    if chart.config is alt.Undefined:
        chart.config = alt.Config()
    chart.config.mark = alt.MarkConfig(aria=False)  # as configure_mark(aria=False) sets it
    return st.altair_chart(chart, key=key, width="stretch", **kwargs)


def csv_download(df: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    """A download button for a table as CSV."""
    st.download_button(label, df.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=f"csv-{name}", icon=":material/download:", on_click="ignore")


def zoom_key(data: SessionData) -> str:
    """st.session_state key of a session's zoom range."""
    return f"zoom::{data.path}"


def get_zoom(data: SessionData) -> tuple[float, float]:
    """The session's current zoom range (default: the serving period)."""
    z = st.session_state.get(zoom_key(data))
    return tuple(z) if z else data.serving_range()  # type: ignore[return-value]


def brush_value(data: SessionData) -> tuple[float, float] | None:
    """The range the Timeline draws its brush at: the last zoom not made with the brush itself.

    Keeping it fixed while the user brushes keeps the chart spec unchanged, so Streamlit swaps
    the zoomed data into the live chart instead of rebuilding it.
    """
    v = st.session_state.get(f"brushval::{data.path}")
    return tuple(v) if v else None  # type: ignore[return-value]


SAME_ZOOM_S = 1e-6
"""Brush ends closer than this to the current zoom's are the same zoom: after a redraw the chart
sends its brush again, converted to pixels and back (1671.0342938159654 s comes back as
...656), and taking that as a new zoom would read and redraw every panel a second time."""


def set_zoom(data: SessionData, t0_s: float, t1_s: float, by_brush: bool = False) -> None:
    """Set the session's zoom range (clamped to the session); ``by_brush`` when the Timeline's
    brush made it (a brush the same as the current zoom, to ``SAME_ZOOM_S``, changes nothing)."""
    lo = max(min(t0_s, t1_s), 0.0)
    hi = min(max(t0_s, t1_s), max(data.duration_s, 1e-3))
    if hi - lo < 1e-3:
        hi = lo + 1e-3
    old = st.session_state.get(zoom_key(data))
    if by_brush and old and abs(old[0] - lo) < SAME_ZOOM_S and abs(old[1] - hi) < SAME_ZOOM_S:
        return
    st.session_state[zoom_key(data)] = (lo, hi)
    if not by_brush:
        whole = hi - lo >= 0.98 * max(data.duration_s, 1e-3)
        st.session_state[f"brushval::{data.path}"] = None if whole else (lo, hi)


def focus_key(data: SessionData) -> str:
    """st.session_state key of the finding a user opened on this session: (t0_s, t1_s, code)."""
    return f"focus::{data.path}"


def get_focus(data: SessionData) -> tuple[float, float, str] | None:
    """The finding the user opened from Overview (its range and code), or None."""
    f = st.session_state.get(focus_key(data))
    return (float(f[0]), float(f[1]), str(f[2])) if f else None


def set_focus(data: SessionData, focus: tuple[float, float, str] | None) -> None:
    """Remember (or clear) the finding to highlight on the time charts."""
    st.session_state[focus_key(data)] = focus


def open_finding(data: SessionData, finding: dict[str, Any], page: str = "views/timeline.py") -> None:
    """Highlight ``finding``'s range, zoom to it with some margin and go to ``page``."""
    a = float(finding["t_start_s"])
    z = float(finding.get("t_end_s") or a)
    pad = max((z - a) * 0.15, 0.5)
    set_focus(data, (a, max(z, a), str(finding.get("code"))))
    set_zoom(data, a - pad, z + pad)
    st.session_state[SCROLL_KEY] = True
    st.switch_page(page)


def note_page(name: str) -> None:
    """Record the page being drawn; ``page_changed()`` says whether the previous run drew another."""
    st.session_state[PAGE_CHANGED_KEY] = st.session_state.get(PAGE_KEY) != name
    st.session_state[PAGE_KEY] = name


def page_changed() -> bool:
    """True on the first run of a page after another page (or the first page of the session)."""
    return bool(st.session_state.get(PAGE_CHANGED_KEY, True))


def _link_state(data: SessionData) -> dict[str, str]:
    out = {"session": str(st.session_state.get(SESSION_KEY) or data.name)}
    z = st.session_state.get(zoom_key(data))
    if z:
        out["t0"], out["t1"] = f"{z[0]:.3f}", f"{z[1]:.3f}"
    f = get_focus(data)
    if f:
        out["focus"] = f"{f[2]}:{f[0]:.3f}:{f[1]:.3f}"
    return out


def apply_link(data: SessionData) -> None:
    """Apply ``?t0=&t1=&focus=CODE:T0:T1`` the first time this browser session shows ``data`` (a
    pasted or shared link opens a new browser session); bad values get one warning line."""
    key = f"linked::{data.path}"
    if st.session_state.get(key):
        return
    st.session_state[key] = True
    qp = {k: st.query_params.get(k) for k in ("t0", "t1", "focus") if st.query_params.get(k)}
    if not qp or st.query_params.get("session") not in (None, st.session_state.get(SESSION_KEY)):
        return
    try:
        if "t0" in qp and "t1" in qp:
            set_zoom(data, float(qp["t0"]), float(qp["t1"]))
        if "focus" in qp:
            code, a, b = str(qp["focus"]).rsplit(":", 2)
            set_focus(data, (float(a), float(b), code))
            st.session_state[SCROLL_KEY] = True
    except ValueError:
        st.warning("Ignored the t0/t1/focus in the address: they are not numbers.")


def write_link(data: SessionData) -> None:
    """Put the session, zoom and focused finding in the address bar: copying it reopens this view."""
    link = _link_state(data)
    for k in ("t0", "t1", "focus"):
        if k not in link and k in st.query_params:
            del st.query_params[k]
    changed = {k: v for k, v in link.items() if st.query_params.get(k) != v}
    if changed:  # one address change (one browser history entry) per zoom, not one per key
        st.query_params.update(changed)


def write_current_link() -> None:
    """``write_link`` for the session in the picker (nothing when it cannot be loaded)."""
    src = current_source()
    if src is None:
        return
    try:
        data = load(src.path)
    except (KvscopeError, sqlite3.DatabaseError, OSError):
        return
    write_link(data)
