"""Load a session file into the arrays and frames the dashboard draws (times relative to start)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd

from dashboard.data.steps import (
    StepSummary,
    View,
    preempting_steps,
    query_buckets,
    rebucket,
    rollup_buckets,
    split_read,
    steps_around,
    summarize,
)
from profiler import units
from profiler.analysis.summarized import prepare
from profiler.errors import SessionFormatError
from profiler.session.reader import Session, open_session
from profiler.session.summaries import max_rowid

T = TypeVar("T")


def file_signature(path: str | Path) -> tuple[str, int, float]:
    """(resolved path, size, mtime) of a session including its WAL: the cache key of its contents.

    An empty WAL holds nothing and is left out: the first read-only open of a checkpointed
    session creates one, which must not make its first reader's cached summary look stale.
    """
    p = Path(path).resolve()
    size, mtime = 0, 0.0
    files = sorted(p.glob("*.kvscope")) if p.is_dir() else [p]  # a folder of shards: all of them
    for f in files:
        for suffix in ("", "-wal"):
            try:
                st = Path(f"{f}{suffix}").stat()
            except OSError:
                continue
            if suffix and st.st_size == 0:
                continue
            size += st.st_size
            mtime = max(mtime, st.st_mtime)
    return str(p), size, mtime


@dataclass
class SessionData:
    """A session read once for the dashboard. Frames carry ``t_s`` = seconds since session start."""

    path: Path
    meta: dict[str, Any]
    start_unix_s: float
    duration_s: float
    engines: pd.DataFrame
    processes: pd.DataFrame
    steps: StepSummary
    gpus: pd.DataFrame
    gpu_samples: pd.DataFrame
    gpu_process_samples: pd.DataFrame
    allocator_samples: pd.DataFrame
    startup_memory: pd.DataFrame
    events: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)
    """Why something was not measured, by topic (``nvml``, ``allocator``), from the events."""
    preemption_record: bool = False
    """The engine core recorded preemptions (rows in ``preemptions``; else vLLM's counters only:
    the forensics, stored or computed, are then not needed to draw the Timeline)."""

    @property
    def name(self) -> str:
        """File stem, for titles."""
        return self.path.stem

    @property
    def complete(self) -> bool:
        """True when the recording finished cleanly."""
        return self.meta.get("ended_unix_s") is not None and not self.meta.get("incomplete_reason")

    @property
    def has_gpu_samples(self) -> bool:
        """True when NVML sampled device memory."""
        return not self.gpu_samples.empty

    def serving_range(self) -> tuple[float, float]:
        """Default zoom: from shortly before the first engine step to the end of the session."""
        f = self.steps.fine
        if f.empty:
            return 0.0, max(self.duration_s, 1e-3)
        first = float(f["t_lo_s"].min())
        last = max(float(f["t_hi_s"].max()), self.duration_s)
        pad = max((last - first) * 0.02, 0.05)
        return max(first - pad, 0.0), last

    @contextmanager
    def open(self) -> Iterator[Session]:
        """A fresh read-only connection (one per query keeps Streamlit's threads apart)."""
        session = open_session(self.path)
        try:
            yield session
        finally:
            session.close()

    def buckets(self, view: View) -> pd.DataFrame:
        """Steps of ``view`` aggregated per pixel bucket (see ``dashboard.data.steps``)."""
        if self.steps.total_steps == 0:
            return self.steps.fine.iloc[0:0]
        if not self.steps.needs_raw(view):
            return rebucket(self.steps.fine, view)
        level = self.steps.rollup_level(view)
        if level is not None:  # a finer stored rollup holds the view: no raw steps read
            with self.open() as session:
                return rebucket(rollup_buckets(session, self.start_unix_s, level, view.t0_s,
                                               view.t1_s), view)
        rowids = self.steps.rowid_range(view)
        if rowids is None:
            return self.steps.fine.iloc[0:0]

        def read(rng: tuple[int, int]) -> pd.DataFrame:
            with self.open() as session:
                return query_buckets(session, self.start_unix_s, view, rng, self.steps.checked)

        return split_read(read, rowids)

    def requests(self) -> pd.DataFrame:
        """Finished requests with ``t_finished_s`` and ``t_arrival_s`` (read from the file)."""
        with self.open() as session:
            return requests_frame(session, self.start_unix_s)

    def preempting_steps(self) -> pd.DataFrame:
        """Every step that preempted (``t_s``, ``engine_id``, ``preemptions``, ``waiting``)."""
        with self.open() as session:
            return preempting_steps(session, self.start_unix_s)

    def steps_around(self, t_s: float, before: int = 2, after: int = 1) -> pd.DataFrame:
        """The steps just before/at and after ``t_s`` (see ``dashboard.data.steps.steps_around``)."""
        with self.open() as session:
            return steps_around(session, self.start_unix_s, self.steps, t_s, before, after)

    def engine(self, engine_id: int | None = None) -> dict[str, Any]:
        """Config of one engine (the first when None) as a plain dict; empty when unknown."""
        if self.engines.empty:
            return {}
        rows = self.engines if engine_id is None else self.engines[self.engines["engine_id"] == engine_id]
        if rows.empty:
            return {}
        return {k: (None if _isnull(v) else v) for k, v in rows.iloc[0].to_dict().items()}

    def num_blocks(self, engine_id: int | None = None) -> int | None:
        """KV cache capacity in blocks (None when unknown)."""
        v = self.engine(engine_id).get("num_gpu_blocks")
        return int(v) if v is not None else None

    def block_size_tokens(self, engine_id: int | None = None) -> int | None:
        """Tokens per KV block (None when unknown)."""
        v = self.engine(engine_id).get("block_size")
        return int(v) if v is not None else None


def _isnull(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _relative(df: pd.DataFrame, col: str, start: float, out: str = "t_s") -> pd.DataFrame:
    df = df.copy()
    df[out] = df[col].astype(float) - start
    return df.sort_values(out, kind="stable").reset_index(drop=True)


class FileMemo(Generic[T]):
    """Values computed from a session file, remembered per (path, size, mtime) in this process.

    A lock per file is held while computing, so two script threads opening the same big session
    compute it once, while another file's value is computed (or read) meanwhile; the oldest entry
    goes once ``size`` are held.
    """

    def __init__(self, compute: Callable[[str | Path], T], size: int = 8) -> None:
        self._compute = compute
        self._size = size
        self._memo: dict[tuple[str, int, float], T] = {}
        self._lock = threading.Lock()
        self._computing: dict[tuple[str, int, float], threading.Lock] = {}

    def peek(self, path: str | Path) -> T | None:
        """The value remembered for the file as it is now, or None (never computes)."""
        return self._memo.get(file_signature(path))

    def __call__(self, path: str | Path) -> T:
        key = file_signature(path)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:
            hit = self._memo.get(key)
            if hit is None:
                hit = self._compute(path)
                with self._lock:
                    self._memo[key] = hit
                    self._computing.pop(key, None)
                    while len(self._memo) > self._size:
                        self._memo.pop(next(iter(self._memo)))
            return hit


def load_session(path: str | Path) -> SessionData:
    """Read every table the dashboard needs; raises SessionFormatError with a one-line reason."""
    session = open_session(path)
    try:
        prepare(session)  # a large session's summaries: built and stored once
        return _load(session)
    except sqlite3.DatabaseError as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc
    finally:
        session.close()


def _load(session: Session) -> SessionData:
    meta = session.meta()
    start, end = session.bounds()
    if start is None:
        raise SessionFormatError(f"{session.path}: empty session (nothing was recorded)")
    start = float(start)
    duration_s = max(float(end) - start, 0.0) if end is not None else 0.0
    processes = session.table("processes")
    events = _relative(session.table("events"), "t_unix_s", start)
    gpu_samples = _relative(session.table("gpu_samples"), "t_unix_s", start)
    gps = _relative(session.table("gpu_process_samples"), "t_unix_s", start)
    alloc = _relative(session.table("allocator_samples"), "t_unix_s", start)
    roles = _role_labels(processes)
    gps["process"] = gps["pid"].map(roles).fillna(gps["pid"].map(lambda p: f"other pid {p}"))
    alloc["process"] = alloc["pid"].map(roles).fillna(alloc["pid"].map(units.fmt_pid))
    return SessionData(
        path=session.path, meta=meta, start_unix_s=start, duration_s=duration_s,
        engines=session.table("engines"), processes=processes,
        steps=summarize(session, start, duration_s), gpus=session.table("gpus"),
        gpu_samples=gpu_samples, gpu_process_samples=gps, allocator_samples=alloc,
        startup_memory=_relative(session.table("startup_memory"), "t_unix_s", start),
        events=events, notes=_notes(events),
        preemption_record=max_rowid(session.db, "preemptions") > 0,
    )


def requests_frame(session: Session, start_unix_s: float, where: str = "",
                   params: tuple[Any, ...] = ()) -> pd.DataFrame:
    """Finished requests with times relative to the session start."""
    req = _relative(session.table("requests", where, params), "t_finished_unix_s", start_unix_s,
                    "t_finished_s")
    req["t_arrival_s"] = req["t_finished_s"] - req["e2e_s"].astype(float)
    return req


def _role_labels(processes: pd.DataFrame) -> dict[int, str]:
    """pid -> readable role ("worker 0", "engine_core", ...)."""
    out: dict[int, str] = {}
    for _, p in processes.iterrows():
        role = str(p["role"])
        if role == "worker" and not _isnull(p["rank"]):
            role = f"worker {int(p['rank'])}"
        pid = int(p["pid"])
        if pid in out and out[pid].startswith("worker"):
            continue  # one process in two roles (an engine core that is its own worker): the worker
        out[pid] = f"{role} ({units.fmt_pid(pid)})"
    return out


def _notes(events: pd.DataFrame) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, topic in (("nvml_off", "nvml"), ("allocator_off", "allocator")):
        rows = events[events["kind"] == kind]
        if not rows.empty:
            out[topic] = str(rows.iloc[0]["message"])
    return out


def load_recent(path: str | Path, window_s: float,
                buckets: int = 600) -> tuple[SessionData, View, pd.DataFrame]:
    """The last ``window_s`` seconds of a (possibly still growing) session, for the Live page.

    Only the window's rows are read, so following a long recording stays cheap. Returns the
    data (its ``steps`` summary covers the window only), the window, and the window's requests.
    """
    session = open_session(path)
    try:
        meta = session.meta()
        start, end = session.bounds()
        if start is None:
            raise SessionFormatError(f"{session.path}: empty session (nothing was recorded yet)")
        start = float(start)
        end_s = (float(end) if end is not None else start) - start
        view = View(max(end_s - window_s, 0.0), max(end_s, 1e-6), buckets)
        fine = query_buckets(session, start, view)
        since = start + view.t0_s
        events = _relative(session.table("events"), "t_unix_s", start)
        gpu = _relative(session.table("gpu_samples", "WHERE t_unix_s >= ?", (since,)), "t_unix_s", start)
        req = requests_frame(session, start, "WHERE t_finished_unix_s >= ?", (since,))
        engines = session.table("engines")
    except sqlite3.DatabaseError as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc
    finally:
        session.close()
    empty = pd.DataFrame()
    summary = StepSummary(fine, end_s, int(fine["n_steps"].sum()) if not fine.empty else 0)
    data = SessionData(
        path=Path(path), meta=meta, start_unix_s=start, duration_s=end_s, engines=engines,
        processes=empty, steps=summary, gpus=empty, gpu_samples=gpu,
        gpu_process_samples=empty, allocator_samples=empty, startup_memory=empty, events=events,
        notes=_notes(events),
    )
    return data, view, req


load_session_memo = FileMemo(load_session, size=16)
"""``load_session`` remembered per file; ``dashboard.serve`` fills it before serving, so the first
page opened on a big session does not wait for its one-scan summary."""
