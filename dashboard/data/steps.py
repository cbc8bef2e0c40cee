"""Engine steps aggregated per time bucket in SQLite, so a million-step session never loads whole.

A session's steps are summarised once into ``BASE_BUCKETS`` fine buckets (one table scan); a
view of any zoom is then re-bucketed from those in numpy, or, when it is narrower than the base
resolution can show, aggregated again from the raw rows of its rowid range only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.errors import SessionFormatError
from profiler.session.reader import Session

BASE_BUCKETS = 8192
"""Buckets of the whole-session summary: enough for ~1000 px at a tenth of the session."""

GAUGES: tuple[str, ...] = ("kv_usage_frac", "running", "waiting")
"""Per-step levels: a bucket keeps their min and max (``<col>_min``, ``<col>_max``)."""

COUNTERS: tuple[str, ...] = (
    "preemptions", "prompt_tokens", "generation_tokens", "prefix_queries_tokens",
    "prefix_hits_tokens", "finished",
)
"""Per-step counts: a bucket keeps their sum (NaN when no step of the bucket reported one)."""

BUCKET_COLUMNS: tuple[str, ...] = (
    "engine_id", "bucket", "t_lo_s", "t_hi_s", "n_steps",
    *(f"{c}_{m}" for c in GAUGES for m in ("min", "max")), *COUNTERS, "rowid_lo", "rowid_hi",
)
"""Columns of a bucket frame: one row per (engine, bucket) that holds at least one step."""


@dataclass(frozen=True)
class View:
    """A visible time range and how many pixel buckets it is drawn with."""

    t0_s: float
    t1_s: float
    buckets: int = 600

    @property
    def width_s(self) -> float:
        """Length of one bucket in seconds."""
        return max(self.t1_s - self.t0_s, 1e-9) / self.buckets


def _bucket_sql(where: str) -> str:
    gauges = ", ".join(f"MIN({c}), MAX({c})" for c in GAUGES)
    sums = ", ".join(f"SUM({c})" for c in COUNTERS)
    return (
        f"SELECT engine_id, MIN(CAST((t_unix_s - ?) / ? AS INTEGER), ?) AS b, MIN(t_unix_s), "
        f"MAX(t_unix_s), COUNT(*), {gauges}, {sums}, MIN(rowid), MAX(rowid) "
        f"FROM steps {where} GROUP BY engine_id, b ORDER BY b, engine_id"
    )


def query_buckets(session: Session, start_unix_s: float, view: View,
                  rowid_range: tuple[int, int] | None = None, checked: bool = False) -> pd.DataFrame:
    """Aggregate the steps inside ``view`` into ``view.buckets`` buckets with one SQL scan.

    ``rowid_range`` bounds the scan (a superset of the view's rows) so that a zoomed view reads
    only its own part of the table. ``checked``: every value of the steps was checked valid when
    written (the session's summaries say so), so the table is read as stored, without the checked
    view's per-value tests. Times in the result are seconds from ``start_unix_s``.
    """
    a = start_unix_s + view.t0_s
    b = start_unix_s + view.t1_s
    where = "WHERE t_unix_s >= ? AND t_unix_s <= ?"
    params: list[float | int] = [a, view.width_s, view.buckets - 1, a, b]
    if rowid_range is not None:
        where += " AND rowid BETWEEN ? AND ?"
        params += [int(rowid_range[0]), int(rowid_range[1])]
    try:
        sql = _bucket_sql(where)
        if checked:
            sql = sql.replace("FROM steps", "FROM main.steps")
        rows = session.db.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc
    df = pd.DataFrame.from_records(rows, columns=list(BUCKET_COLUMNS)).astype("float64")
    if not df.empty:
        df["t_lo_s"] -= start_unix_s
        df["t_hi_s"] -= start_unix_s
    return df


def rebucket(fine: pd.DataFrame, view: View) -> pd.DataFrame:
    """Merge fine buckets (from ``query_buckets``) that fall in ``view`` into its pixel buckets.

    Exact for what a bucket holds: min of mins, max of maxes, sums of sums.
    """
    sel = fine[(fine["t_hi_s"] >= view.t0_s) & (fine["t_lo_s"] <= view.t1_s)]
    if sel.empty:
        return pd.DataFrame(columns=list(BUCKET_COLUMNS), dtype="float64")
    pix = np.clip(((sel["t_lo_s"].to_numpy() - view.t0_s) / view.width_s).astype(np.int64), 0,
                  view.buckets - 1)
    return merge_buckets(sel, pix)


def merge_buckets(parts: pd.DataFrame, bucket: np.ndarray) -> pd.DataFrame:
    """Bucket rows merged per (engine, ``bucket``): min of mins, max of maxes, sums of sums
    (a counter no part reported stays NaN, never 0)."""
    g = parts.drop(columns=["engine_id", "bucket"]).groupby(
        [parts["engine_id"].to_numpy(), bucket], sort=True, dropna=False)
    agg: dict[str, str] = {"t_lo_s": "min", "t_hi_s": "max", "n_steps": "sum",
                           "rowid_lo": "min", "rowid_hi": "max"}
    for c in GAUGES:
        agg[f"{c}_min"] = "min"
        agg[f"{c}_max"] = "max"
    for c in COUNTERS:
        agg[c] = "sum"
    out = g.agg(agg)
    # sum() of all-NaN is 0 in pandas; keep "not reported" as NaN.
    counts = g[list(COUNTERS)].count()
    for c in COUNTERS:
        out.loc[counts[c] == 0, c] = np.nan
    out.index.names = ["engine_id", "bucket"]
    out = out.reset_index()
    return out[list(BUCKET_COLUMNS)].astype("float64")


SPLIT_ROWS = 50_000
"""A raw read over more rows than this is done as two halves at once, each on its own connection
(SQLite steps without holding the GIL): on two cores, about half the time."""

_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvscope-steps")


def split_read(read: Callable[[tuple[int, int]], pd.DataFrame],
               rowid_range: tuple[int, int]) -> pd.DataFrame:
    """``read(rowid_range)`` (a ``query_buckets`` on a fresh connection), as two concurrent halves
    merged bucket by bucket when the range holds more than ``SPLIT_ROWS`` rows: the same frame."""
    lo, hi = rowid_range
    if hi - lo <= SPLIT_ROWS:
        return read(rowid_range)
    mid = (lo + hi) // 2
    both = pd.concat(list(_READERS.map(read, [(lo, mid), (mid + 1, hi)])), ignore_index=True)
    if both.empty:
        return both
    out = merge_buckets(both, both["bucket"].to_numpy(dtype=np.int64))
    return out.sort_values(["bucket", "engine_id"], kind="stable").reset_index(drop=True)


@dataclass
class StepSummary:
    """The whole-session fine buckets of one session, and how to get any view from them."""

    fine: pd.DataFrame
    duration_s: float
    total_steps: int
    width_s: float | None = None
    """Width of the fine buckets when they come from the session's stored rollups (else
    ``duration / BASE_BUCKETS``)."""
    levels_s: tuple[float, ...] = ()
    """Rollup levels finer than ``fine`` that a zoom can read (empty: zooms read raw steps)."""
    checked: bool = False
    """Every stored step value was checked valid when written: raw reads skip the checks."""

    @property
    def fine_width_s(self) -> float:
        """Width of one fine bucket in seconds."""
        return self.width_s or max(self.duration_s, 1e-9) / BASE_BUCKETS

    def rollup_level(self, view: View) -> float | None:
        """The coarsest stored rollup level fine enough for ``view`` (None: read raw steps)."""
        fits = [level for level in self.levels_s if level <= view.width_s]
        return max(fits) if fits else None

    def needs_raw(self, view: View) -> bool:
        """True when the fine buckets are too coarse to fill ``view``'s pixel buckets."""
        return view.width_s < self.fine_width_s and self.rows_in(view) > 0

    def rows_in(self, view: View) -> int:
        """Steps inside the view, counted from the fine buckets (a slight over-count at the edges)."""
        f = self.fine
        sel = f[(f["t_hi_s"] >= view.t0_s) & (f["t_lo_s"] <= view.t1_s)]
        return int(sel["n_steps"].sum())

    def rowid_range(self, view: View) -> tuple[int, int] | None:
        """Rowids that cover every step of ``view`` (None when it holds no step)."""
        f = self.fine
        sel = f[(f["t_hi_s"] >= view.t0_s) & (f["t_lo_s"] <= view.t1_s)]
        if sel.empty:
            return None
        return int(sel["rowid_lo"].min()), int(sel["rowid_hi"].max())


ROLLUP_MAX_BUCKETS = 4 * BASE_BUCKETS
"""The whole-session summary reads the finest stored rollup level with at most this many buckets."""
ROLLUP_MIN_BUCKETS = 512
"""A session too short for that many buckets at the finest level is summarised from its steps
(it has few enough of them); a zoom narrower than the level reads raw steps either way."""


def rollup_buckets(session: Session, start_unix_s: float, level_s: float,
                   t0_s: float | None = None, t1_s: float | None = None) -> pd.DataFrame:
    """The stored rollups of one level (``profiler.session.summaries``) as a bucket frame,
    optionally only the buckets overlapping ``t0_s..t1_s`` (seconds from ``start_unix_s``)."""
    from profiler.session import summaries as sm

    sums = ", ".join(f"CASE WHEN {c}_n > 0 THEN {c}_sum END" for c in COUNTERS)
    where = "level = ? AND bucket <> ?"
    params: list[float | int] = [level_s, sm.UNTIMED_BUCKET]
    if t0_s is not None and t1_s is not None:
        where += " AND t_hi >= ? AND t_lo <= ?"
        params += [start_unix_s + t0_s, start_unix_s + t1_s]
    sql = (f"SELECT NULLIF(engine_id, {sm.NO_ENGINE}), bucket, t_lo - ?, t_hi - ?, n_rows, "
           f"{', '.join(f'{g}_min, {g}_max' for g in GAUGES)}, {sums}, rowid_lo, rowid_hi "
           f"FROM {sm.ROLLUP} WHERE {where} ORDER BY bucket, engine_id")
    try:
        rows = session.db.execute(sql, [start_unix_s, start_unix_s, *params]).fetchall()
    except sqlite3.DatabaseError as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc
    return pd.DataFrame.from_records(rows, columns=list(BUCKET_COLUMNS)).astype("float64")


def _from_rollups(session: Session, start_unix_s: float, duration_s: float) -> StepSummary | None:
    from profiler.session import summaries as sm

    if not sm.up_to_date(session.db):
        return None
    levels = [lv for lv in sm.LEVELS_S if duration_s / lv <= ROLLUP_MAX_BUCKETS]
    if not levels or duration_s / levels[0] < ROLLUP_MIN_BUCKETS:
        return None
    level = levels[0]
    fine = rollup_buckets(session, start_unix_s, level)
    total = int(fine["n_steps"].sum()) if not fine.empty else 0
    done = sm.stored_bad(session.db, "steps")
    checked = (done is not None and done[0] >= sm.max_rowid(session.db, "steps")
               and not done[1])
    return StepSummary(fine, max(duration_s, 1e-6), total, level,
                       tuple(lv for lv in sm.LEVELS_S if lv < level), checked)


def summarize(session: Session, start_unix_s: float, duration_s: float) -> StepSummary:
    """The whole session in fine buckets: from its stored rollups when it has them (any length
    costs the same), else one scan of the steps table into ``BASE_BUCKETS`` buckets."""
    rolled = _from_rollups(session, start_unix_s, duration_s)
    if rolled is not None:
        return rolled
    end = max(duration_s, 1e-6)
    fine = query_buckets(session, start_unix_s, View(0.0, end, BASE_BUCKETS))
    # Steps before the recorded start (clock skew between processes) land in bucket 0 by clamping.
    before = query_buckets(session, start_unix_s, View(-1e9, 0.0, 1)) if _has_before(
        session, start_unix_s) else None
    if before is not None and not before.empty:
        fine = pd.concat([before, fine], ignore_index=True)
    return StepSummary(fine, end, int(fine["n_steps"].sum()) if not fine.empty else 0)


def _has_before(session: Session, start_unix_s: float) -> bool:
    lo = session.scalar("SELECT MIN(t_unix_s) FROM steps")
    return lo is not None and lo < start_unix_s


def preempting_steps(session: Session, start_unix_s: float) -> pd.DataFrame:
    """Every step that preempted at least one request: ``t_s``, ``engine_id``, ``preemptions``, ``waiting``."""
    sql = ("SELECT t_unix_s - ? AS t_s, engine_id, preemptions, waiting, kv_usage_frac FROM steps "
           "WHERE preemptions > 0 ORDER BY t_unix_s")
    try:
        return pd.read_sql_query(sql, session.db, params=(start_unix_s,))
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc


def steps_around(session: Session, start_unix_s: float, summary: StepSummary, t_s: float,
                 before: int = 2, after: int = 1) -> pd.DataFrame:
    """Up to ``before`` steps at or before ``t_s`` and ``after`` steps after it, oldest first.

    Reads only the rowids of the fine buckets next to ``t_s``, so it is instant on any session.
    """
    f = summary.fine
    if f.empty:
        return pd.DataFrame(columns=["t_s", "engine_id", *GAUGES, *COUNTERS])
    earlier = f[f["t_lo_s"] <= t_s].tail(max(before, 1) + 1)
    later = f[f["t_hi_s"] > t_s].head(max(after, 1) + 1)
    lo = int(min(earlier["rowid_lo"].min() if not earlier.empty else later["rowid_lo"].min(),
                 later["rowid_lo"].min() if not later.empty else earlier["rowid_lo"].min()))
    hi = int(max(later["rowid_hi"].max() if not later.empty else earlier["rowid_hi"].max(),
                 earlier["rowid_hi"].max() if not earlier.empty else later["rowid_hi"].max()))
    cols = ", ".join(("engine_id", *GAUGES, *COUNTERS))
    sql = (f"SELECT t_unix_s - ? AS t_s, {cols} FROM steps WHERE rowid BETWEEN ? AND ? "
           "ORDER BY t_unix_s")
    try:
        rows = pd.read_sql_query(sql, session.db, params=(start_unix_s, lo, hi))
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
        raise SessionFormatError(f"{session.path}: damaged session file ({exc})") from exc
    t = rows["t_s"].to_numpy()
    k = int(np.searchsorted(t, t_s, side="right"))
    return rows.iloc[max(k - before, 0): k + after].reset_index(drop=True)
