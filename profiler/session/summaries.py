"""Summaries kept in the session file, so that opening a day-long session costs what a short one does.

Three additive tables (sessions without them read as before; SCHEMA.md documents them):

``kvscope_rollup``
    Steps per engine and time bucket at a few fixed resolutions (``LEVELS_S``: 1, 10, 100 and
    1000 s buckets of unix time): row counts, min/max of the levels, sums and counts of the counters,
    the rowid range. Built from the checked values (what the reader's views show), so a rollup
    equals the same aggregate over the steps themselves. Buckets merge exactly (min of mins, sums
    of sums), so the rollup of a growing session is folded forward, never rebuilt.
``kvscope_summary_state``
    Watermarks: the last ``steps`` rowid folded into the rollups, and for every table the last rowid
    whose values were checked, with the impossible values found so far (``Session.notes``).
``kvscope_cache``
    Results that depend on the whole session (the report with its findings), each stored with the
    data version it was computed from (``data_version``); a different version is a miss.

The writer folds and checks every batch it commits, in the same transaction (``maintain``), so a
session recorded by this kvscope always has them up to date. An older session (or one built by
other means) gets them once, on first open, through ``catch_up``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from profiler.session.schema import TABLES
from profiler.session.validity import valid_sql, view_column

ROLLUP = "kvscope_rollup"
STATE = "kvscope_summary_state"
CACHE = "kvscope_cache"
SUMMARY_TABLES = (ROLLUP, STATE, CACHE)

LEVELS_S = (1.0, 10.0, 100.0, 1000.0)
"""Bucket widths of the rollups, in seconds of unix time."""

UNTIMED_BUCKET = -1
"""Bucket of the steps whose time is missing or impossible (counted, never drawn)."""
NO_ENGINE = -1
"""``engine_id`` of rollup rows whose steps have none."""

GAUGES = ("kv_usage_frac", "running", "waiting")
COUNTERS = ("preemptions", "prompt_tokens", "generation_tokens", "prefix_queries_tokens",
            "prefix_hits_tokens", "finished", "preempted_prefix_queries_tokens",
            "preempted_prefix_hits_tokens")

SATURATED_KV_FRAC = 0.95
"""KV usage at or above which a step with requests waiting counts as saturated (``n_saturated``)."""

ROLLUP_COLUMNS: tuple[str, ...] = (
    "level", "engine_id", "bucket", "t_lo", "t_hi", "n_rows", "n_scheduled", "n_saturated",
    *(f"{g}_{m}" for g in GAUGES for m in ("min", "max", "sum", "n")),
    "kv_sched_sum", "kv_sched_n", "kv_sched_max",
    *(f"{c}_{m}" for c in COUNTERS for m in ("sum", "n")),
    "rowid_lo", "rowid_hi",
)
"""Columns of ``kvscope_rollup``: ``n_scheduled`` counts steps with ``running`` reported (the
report's ``steps``), ``kv_sched_*`` the KV usage of those steps (the report's peak and mean)."""

DDL = [
    f"CREATE TABLE IF NOT EXISTS {ROLLUP} ("
    + ", ".join(f"{c} {'REAL' if c.startswith(('t_', 'kv_')) else 'INTEGER'}"
                for c in ROLLUP_COLUMNS)
    + ", PRIMARY KEY (level, engine_id, bucket)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {STATE} (name TEXT PRIMARY KEY, rowid_hi INTEGER, value TEXT)",
    f"CREATE TABLE IF NOT EXISTS {CACHE} (name TEXT PRIMARY KEY, version TEXT, value TEXT)",
]

RESCANNED = frozenset({"meta", "engines"})
"""Small tables that writers update in place: checked whole on every open, never watermarked."""

CHUNK_ROWS = 500_000
"""Rows folded or checked per statement when catching up (progress is reported per chunk)."""

Progress = Callable[[str, float], None]
"""``progress(what, fraction_done)``."""


def _valid(table: str, col: str) -> str:
    """``col`` as the reader's checked view shows it (NULL when impossible)."""
    expr = view_column(table, col)
    return expr.rsplit(" AS ", 1)[0] if " AS " in expr else expr


def _fine_sql() -> str:
    """Fold raw steps (a rowid range) into the finest level: one pass, checked values."""
    level_s = LEVELS_S[0]
    v = {c: _valid("steps", c) for c in ("engine_id", "t_unix_s", *GAUGES, *COUNTERS)}
    checked = ", ".join(f"{expr} AS {c}" for c, expr in v.items())
    sched = "CASE WHEN running IS NOT NULL THEN kv_usage_frac END"
    select = [
        repr(level_s), f"COALESCE(engine_id, {NO_ENGINE})",
        f"COALESCE(CAST(t_unix_s / {level_s!r} AS INTEGER), {UNTIMED_BUCKET})",
        "MIN(t_unix_s)", "MAX(t_unix_s)", "COUNT(*)", "COUNT(running)",
        f"COUNT(CASE WHEN kv_usage_frac >= {SATURATED_KV_FRAC!r} AND waiting > 0 THEN 1 END)",
        *(f"{agg}({g})" for g in GAUGES for agg in ("MIN", "MAX", "SUM", "COUNT")),
        f"SUM({sched})", f"COUNT({sched})", f"MAX({sched})",
        *(f"{agg}({c})" for c in COUNTERS for agg in ("SUM", "COUNT")),
        "MIN(rowid)", "MAX(rowid)",
    ]
    merge = []
    for c in ROLLUP_COLUMNS[3:]:
        if c.endswith(("_min", "t_lo", "rowid_lo")):
            merge.append(f"{c} = COALESCE(MIN({c}, excluded.{c}), {c}, excluded.{c})")
        elif c.endswith(("_max", "t_hi", "rowid_hi")):
            merge.append(f"{c} = COALESCE(MAX({c}, excluded.{c}), {c}, excluded.{c})")
        elif c.endswith("_sum"):
            merge.append(f"{c} = CASE WHEN {c} IS NULL THEN excluded.{c} WHEN excluded.{c} IS NULL "
                         f"THEN {c} ELSE {c} + excluded.{c} END")
        else:  # counts
            merge.append(f"{c} = {c} + excluded.{c}")
    # the checked values are computed once per row in the subquery, not once per aggregate
    return (f"INSERT INTO {ROLLUP} ({', '.join(ROLLUP_COLUMNS)}) SELECT {', '.join(select)} "
            f"FROM (SELECT rowid, {checked} FROM main.steps WHERE rowid > ? AND rowid <= ?) "
            f"WHERE 1 GROUP BY 2, 3 ON CONFLICT (level, engine_id, bucket) DO UPDATE SET "
            f"{', '.join(merge)}")


def _coarse_sql(level_s: float, finer_s: float) -> str:
    """Rebuild a coarser level's buckets ``?..?`` from the finer level's (exact merges)."""
    ratio = int(round(level_s / finer_s))
    agg = []
    for c in ROLLUP_COLUMNS[3:]:
        if c.endswith(("_min", "t_lo", "rowid_lo")):
            agg.append(f"MIN({c})")
        elif c.endswith(("_max", "t_hi", "rowid_hi")):
            agg.append(f"MAX({c})")
        else:  # sums (NULL when all are) and counts
            agg.append(f"SUM({c})")
    bucket = f"CASE WHEN bucket = {UNTIMED_BUCKET} THEN {UNTIMED_BUCKET} ELSE bucket / {ratio} END"
    return (f"INSERT OR REPLACE INTO {ROLLUP} ({', '.join(ROLLUP_COLUMNS)}) SELECT {level_s!r}, "
            f"engine_id, {bucket}, {', '.join(agg)} FROM {ROLLUP} WHERE level = {finer_s!r} AND "
            f"({bucket}) BETWEEN ? AND ? GROUP BY engine_id, {bucket}")


_FINE = _fine_sql()
_COARSE = {LEVELS_S[i]: _coarse_sql(LEVELS_S[i], LEVELS_S[i - 1]) for i in range(1, len(LEVELS_S))}
_RANGE = (f"SELECT MIN(b), MAX(b), MAX(b IS NULL) FROM (SELECT CAST({_valid('steps', 't_unix_s')} "
          f"/ {LEVELS_S[0]!r} AS INTEGER) AS b FROM main.steps WHERE rowid > ? AND rowid <= ?)")


def ensure(conn: sqlite3.Connection) -> None:
    """Create the summary tables if the file lacks them (inside the caller's transaction); tables
    of another layout (an earlier kvscope's) are dropped and rebuilt from the rows."""
    have = [r[1] for r in conn.execute(f"PRAGMA main.table_info({ROLLUP})")]
    if have and tuple(have) != ROLLUP_COLUMNS:
        for table in SUMMARY_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS main.{table}")
    for stmt in DDL:
        conn.execute(stmt)


def has_summaries(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """True when the file holds the summary tables."""
    names = {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")}
    return all(t in names for t in SUMMARY_TABLES)


def watermark(conn: sqlite3.Connection, name: str) -> int | None:
    """The stored ``rowid_hi`` of state ``name`` (None when never stored)."""
    row = conn.execute(f"SELECT rowid_hi FROM main.{STATE} WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def max_rowid(conn: sqlite3.Connection, table: str) -> int:
    """The table's highest rowid (0 when empty or absent)."""
    try:
        return int(conn.execute(f"SELECT MAX(rowid) FROM main.{table}").fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0


def fold_steps(conn: sqlite3.Connection, progress: Progress | None = None) -> int:
    """Fold the steps added since the watermark into the rollups; returns the rows folded.

    The finest level is folded from the new steps; each coarser level rebuilds only the buckets
    those steps touched, from the level below (exact: min of mins, sums of sums)."""
    lo = watermark(conn, "rollup:steps") or 0
    hi = max_rowid(conn, "steps")
    start = lo
    while lo < hi:
        top = min(lo + CHUNK_ROWS, hi)
        conn.execute(_FINE, (lo, top))
        b_lo, b_hi, untimed = conn.execute(_RANGE, (lo, top)).fetchone()
        for level, sql in _COARSE.items():
            ratio = level / LEVELS_S[0]
            if b_lo is not None:
                conn.execute(sql, (int(b_lo // ratio), int(b_hi // ratio)))
            if untimed:
                conn.execute(sql, (UNTIMED_BUCKET, UNTIMED_BUCKET))
        lo = top
        if progress is not None:
            progress("rollups", (lo - start) / max(hi - start, 1))
    conn.execute(f"INSERT OR REPLACE INTO {STATE} VALUES ('rollup:steps', ?, NULL)", (hi,))
    return hi - start


def _checks(table: str) -> list[tuple[str, str]]:
    return [(c, cond) for c in TABLES[table] if (cond := valid_sql(table, c)) is not None]


def scan_bad(conn: sqlite3.Connection, table: str, lo: int, hi: int) -> dict[str, list[Any]]:
    """Impossible values of ``table`` in rowids ``lo < rowid <= hi``: {column: [count, first
    rowids]} (only columns with some)."""
    checks = _checks(table)
    if not checks or hi <= lo:
        return {}
    bad = [f'("{c}" IS NOT NULL AND NOT ({cond}))' for c, cond in checks]
    where = "rowid > ? AND rowid <= ?"
    if not conn.execute(f"SELECT EXISTS (SELECT 1 FROM main.{table} WHERE ({where}) AND "
                        f"({' OR '.join(bad)}))", (lo, hi)).fetchone()[0]:
        return {}
    counts = conn.execute(f"SELECT {', '.join(f'SUM({b})' for b in bad)} FROM main.{table} "
                          f"WHERE {where}", (lo, hi)).fetchone()
    out: dict[str, list[Any]] = {}
    for (c, cond), n in zip(checks, counts, strict=True):
        if n:
            rowids = [r[0] for r in conn.execute(
                f'SELECT rowid FROM main.{table} WHERE {where} AND "{c}" IS NOT NULL AND NOT '
                f"({cond}) ORDER BY rowid LIMIT 3", (lo, hi))]
            out[c] = [int(n), rowids]
    return out


def merge_bad(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Impossible-value records of two rowid ranges (``a`` before ``b``) as one."""
    out = {c: [n, list(r)] for c, (n, r) in a.items()}
    for c, (n, rowids) in b.items():
        if c in out:
            out[c][0] += n
            out[c][1] = (out[c][1] + rowids)[:3]
        else:
            out[c] = [n, list(rowids)]
    return out


def stored_bad(conn: sqlite3.Connection, table: str) -> tuple[int, dict[str, list[Any]]] | None:
    """(last checked rowid, impossible values found up to it) of ``table``; None if never checked."""
    row = conn.execute(f"SELECT rowid_hi, value FROM main.{STATE} WHERE name = ?",
                       (f"check:{table}",)).fetchone()
    if row is None:
        return None
    try:
        value = json.loads(row[1]) if row[1] else {}
    except ValueError:
        return None
    return int(row[0]), value if isinstance(value, dict) else {}


def check_table(conn: sqlite3.Connection, table: str, progress: Progress | None = None) -> None:
    """Check the rows of ``table`` added since its watermark; store the merged result."""
    stored = stored_bad(conn, table)
    lo, found = stored if stored is not None else (0, {})
    hi = max_rowid(conn, table)
    start = lo
    while lo < hi:
        top = min(lo + CHUNK_ROWS, hi)
        found = merge_bad(found, scan_bad(conn, table, lo, top))
        lo = top
        if progress is not None and hi - start > CHUNK_ROWS:
            progress(f"checking {table}", (lo - start) / max(hi - start, 1))
    conn.execute(f"INSERT OR REPLACE INTO {STATE} VALUES (?, ?, ?)",
                 (f"check:{table}", hi, json.dumps(found)))


def maintain(conn: sqlite3.Connection, tables: set[str]) -> None:
    """Fold and check what a writer just inserted into ``tables`` (inside its transaction)."""
    if "steps" in tables:
        fold_steps(conn)
    for table in tables:
        if table in TABLES and table not in RESCANNED:
            check_table(conn, table)


def catch_up(conn: sqlite3.Connection, progress: Progress | None = None) -> None:
    """Bring every summary up to date (an older session's first open): one transaction."""
    ensure(conn)
    fold_steps(conn, progress)
    for table in TABLES:
        if table not in RESCANNED and max_rowid(conn, table):
            check_table(conn, table, progress)


def up_to_date(conn: sqlite3.Connection) -> bool:
    """True when the rollups cover every step and every table's values are checked."""
    if not has_summaries(conn):
        return False
    if (watermark(conn, "rollup:steps") or 0) < max_rowid(conn, "steps"):
        return False
    for table in TABLES:
        if table in RESCANNED:
            continue
        hi = max_rowid(conn, table)
        if hi and (watermark(conn, f"check:{table}") or 0) < hi:
            return False
    return True


_CODE_VERSION: str | None = None


def code_version() -> str:
    """A fingerprint of the code that computes stored results (the ``profiler`` package's
    ``analysis`` and ``session`` sources): a result stored by other code is stale."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for folder in ("analysis", "session"):
            for f in sorted((root / folder).rglob("*.py")):
                h.update(f.relative_to(root).as_posix().encode())
                h.update(f.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def data_version(conn: sqlite3.Connection) -> str:
    """A fingerprint of the session's data (every table's row count bound, i.e. max rowid, and the
    contents of the small tables updated in place) and of the code (``code_version``); a cached
    result computed at another version is stale."""
    parts: dict[str, Any] = {t: max_rowid(conn, t) for t in TABLES if t not in RESCANNED}
    for t in sorted(RESCANNED):  # small, updated in place: their contents
        rows = conn.execute(f"SELECT * FROM main.{t} ORDER BY rowid").fetchall()
        parts[t] = hashlib.sha256(json.dumps(rows, default=repr).encode()).hexdigest()[:16]
    parts["code"] = code_version()
    return json.dumps(parts, sort_keys=True)


def cached(conn: sqlite3.Connection, name: str, version: str) -> str | None:
    """The stored value of ``name`` if it was computed at ``version``."""
    if not has_summaries(conn):
        return None
    row = conn.execute(f"SELECT version, value FROM main.{CACHE} WHERE name = ?", (name,)).fetchone()
    return row[1] if row is not None and row[0] == version else None


STORE_MIN_STEPS = 100_000
"""Sessions with fewer steps are summarised in memory when opened (it takes well under a second)
and never written to; larger ones get their summaries stored in the file, once."""


def step_totals(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """The report's step totals from the rollups (coarsest level), in ``report._STEP_TOTALS``'s
    order: scheduled steps, preemptions, prefix queries/hits, preempted queries/hits, KV peak and
    mean over scheduled steps, finished requests. Sums of nothing are NULL, as in SQL."""
    level = LEVELS_S[-1]

    def s(c: str) -> str:
        return f"CASE WHEN SUM({c}_n) > 0 THEN SUM({c}_sum) END"

    return conn.execute(
        f"SELECT COALESCE(SUM(n_scheduled), 0), {s('preemptions')}, {s('prefix_queries_tokens')}, "
        f"{s('prefix_hits_tokens')}, {s('preempted_prefix_queries_tokens')}, "
        f"{s('preempted_prefix_hits_tokens')}, MAX(kv_sched_max), "
        f"CASE WHEN SUM(kv_sched_n) > 0 THEN SUM(kv_sched_sum) / SUM(kv_sched_n) END, "
        f"{s('finished')} FROM main.{ROLLUP} WHERE level = ?", (level,)).fetchone()


def _writable(path: str) -> sqlite3.Connection | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30.0,
                               isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error:
        return None
    return conn


def build_and_store(path: str, progress: Progress | None = None) -> bool:
    """Bring the summaries of the session at ``path`` up to date and store them in it, in one
    transaction; False when the file cannot be written (they are then used from memory)."""
    return _write(path, lambda conn: catch_up(conn, progress))


def store_cached(path: str, name: str, version: str, value: str) -> bool:
    """Store ``value`` as ``name`` computed at ``version``; False when the file cannot be written."""
    def store(conn: sqlite3.Connection) -> None:
        ensure(conn)
        conn.execute(f"INSERT OR REPLACE INTO {CACHE} VALUES (?, ?, ?)", (name, version, value))

    return _write(path, store)


def _write(path: str, work: Callable[[sqlite3.Connection], object]) -> bool:
    """Run ``work`` in one committed transaction on the session at ``path``; False when the file
    cannot be written (rolled back on an SQLite error)."""
    conn = _writable(path)
    if conn is None:
        return False
    try:
        work(conn)
        conn.execute("COMMIT")
        return True
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return False
    finally:
        conn.close()


def _read_only(path: str) -> sqlite3.Connection | None:
    """A read-only sqlite3 connection to the session file at ``path`` (no pandas, no checked
    views); None when it is not a file, not SQLite or of an unknown schema version."""
    from pathlib import Path
    from urllib.parse import quote

    from profiler.session.schema import SCHEMA_VERSION

    p = Path(path)
    try:
        if not p.is_file():
            return None
        with p.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return None
        conn = sqlite3.connect(f"file:{quote(str(p.resolve()))}?mode=ro", uri=True, timeout=10.0)
    except (OSError, sqlite3.Error):
        return None
    try:
        if 1 <= conn.execute("PRAGMA user_version").fetchone()[0] <= SCHEMA_VERSION:
            return conn
    except sqlite3.Error:
        pass
    conn.close()
    return None


def lookup_cached(path: str, name: str) -> str | None:
    """The stored ``name`` of the session at ``path`` when it is current, read with sqlite3
    alone (no pandas): what ``kvscope report --json`` prints for a large session it has seen.
    Any doubt (not a file, not a session, another version, not current) is a miss; the caller
    then opens the session the full way, which says what is wrong."""
    conn = _read_only(path)
    if conn is None:
        return None
    try:
        return cached(conn, name, data_version(conn)) if up_to_date(conn) else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def must_compute(path: str, name: str) -> bool:
    """True when the session at ``path`` is large (``STORE_MIN_STEPS`` steps or more) and its
    stored ``name`` is missing or stale (another data version: new rows, or another kvscope's
    code): reading it means computing it from the whole session first. False on any doubt (the
    caller's full open says what is wrong)."""
    conn = _read_only(path)
    if conn is None:
        return False
    try:
        if max_rowid(conn, "steps") < STORE_MIN_STEPS:
            return False
        return not up_to_date(conn) or cached(conn, name, data_version(conn)) is None
    except sqlite3.Error:
        return False
    finally:
        conn.close()
