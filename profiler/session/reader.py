"""Read API for session files: open with one-line errors, tables as pandas DataFrames.

Opening never writes to the file, so a session that is still being recorded can be read at the
same time, and bundled sessions can live in read-only folders (a WAL session whose ``-shm`` cannot
be created there is opened ``immutable``).

Every value is checked here, once, at the read boundary: the file must have every table and column
of ``schema.TABLES`` (a missing one is a one-line ``SessionFormatError``), and each connection reads
the tables through same-named TEMP views that turn values impossible for their column (text in a
number column, ±Inf, a negative count, a fraction above 1, ``block_size`` 0, see
``schema.column_rule``) into NULL. ``Session.notes()`` says which values were ignored, in which rows.
"""

from __future__ import annotations

import json
import math
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from profiler.errors import SessionFormatError
from profiler.session import shards, summaries
from profiler.session.schema import OPTIONAL_TABLES, TABLES, UNIX_S_MAX, check_version, column_rule
from profiler.session.shards import SHARD_NOTES_KEY
from profiler.session.validity import view_column as _view_column
from profiler.units import first_line

_META_TIMES = ("started_unix_s", "ended_unix_s")
_META_TEXT = ("host", "kvscope_version", "vllm_version", "model", "incomplete_reason")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@dataclass
class Session:
    """An open, read-only session file."""

    path: Path
    db: sqlite3.Connection
    """The checked connection: its tables are the TEMP views of valid values (use this)."""
    immutable: bool = False
    """Opened ``immutable=1`` (a WAL session whose ``-shm`` could not be created)."""
    _notes: list[str] | None = field(default=None, repr=False)
    _raw: sqlite3.Connection | None = field(default=None, repr=False)
    window: tuple[float, float] | None = None
    """The time window (unix seconds) this session reads, from ``open_session(window=...)``."""
    _bounds: tuple[float | None, float | None] | None = field(default=None, repr=False)
    file: Path | None = None
    """The SQLite file read: ``path`` itself, or for a folder of shards the merged copy
    (``profiler.session.shards.merged_file``)."""

    @property
    def conn(self) -> sqlite3.Connection:
        """A second, unchecked connection to the file as stored (to copy rows verbatim)."""
        if self._raw is None:
            self._raw = _connect(self.file or self.path, self.immutable)
            self._raw.execute("PRAGMA query_only = 1")
        return self._raw

    def meta(self) -> dict[str, Any]:
        """Session metadata (started_unix_s, host, command, ended_unix_s, exit_code, ...).

        Values of the wrong type (a time that is not a plausible unix time, a model that is not
        text) are left out; ``notes`` names them.
        """
        return self._meta()[0]

    def _meta(self) -> tuple[dict[str, Any], list[str]]:
        out: dict[str, Any] = {}
        bad: list[str] = []
        for key, value in self.rows("SELECT key, value FROM meta"):
            try:
                value = json.loads(value, parse_constant=_reject_constant)
            except (TypeError, ValueError, RecursionError):
                pass
            if not isinstance(key, str):
                continue
            if key in _META_TIMES and not _plausible(value, 0.0, UNIX_S_MAX):
                bad.append(key)
                continue
            if key == "exit_code" and not (isinstance(value, int) and not isinstance(value, bool)):
                bad.append(key)
                continue
            if key in _META_TEXT and not isinstance(value, str):
                bad.append(key)
                continue
            if key == "command" and not (isinstance(value, list)
                                         and all(isinstance(a, str) for a in value)):
                bad.append(key)
                continue
            out[key] = value
        return out, bad

    def notes(self) -> list[str]:
        """What the reader ignored: one line per meta key or column with impossible values."""
        if self._notes is None:
            self._notes = self._scan_notes()
        return list(self._notes)

    def _scan_notes(self) -> list[str]:
        meta, bad = self._meta()
        notes = [f"meta.{key}: ignored (not a valid value)" for key in bad]
        shard_notes = meta.get(SHARD_NOTES_KEY) if self.file is not None else None
        if isinstance(shard_notes, list):
            notes += [str(n) for n in shard_notes]
        stored = summaries.has_summaries(self.db)
        for table in TABLES:
            if table == "meta" or table not in self._raw_tables():
                continue
            # rows the writer already checked (summaries.py) are not read again
            done = (summaries.stored_bad(self.db, table)
                    if stored and table not in summaries.RESCANNED else None)
            lo, found = done if done is not None else (0, {})
            try:
                found = summaries.merge_bad(found, summaries.scan_bad(
                    self.db, table, lo, summaries.max_rowid(self.db, table)))
            except sqlite3.DatabaseError as exc:
                raise SessionFormatError(f"{self.path}: damaged session file ({first_line(exc)})") from exc
            for c in TABLES[table]:
                if c not in found:
                    continue
                n, rowids = found[c]
                kind, lo_v, hi_v = column_rule(table, c)
                what = (f"not a number in {_num(lo_v)}..{_num(hi_v)}" if kind == "number" else
                        "not whole int64 hashes" if kind == "blob" else
                        "not an integer" if kind == "hash" else "not text")
                shown = ", ".join(str(r) for r in rowids) + (", ..." if n > len(rowids) else "")
                notes.append(f"{table}.{c}: ignored {n} value{'s' if n != 1 else ''} "
                             f"({what}; rows {shown})")
        return notes

    def _raw_tables(self) -> set[str]:
        return {r[0] for r in self.rows("SELECT name FROM main.sqlite_master WHERE type='table'")}

    def has_table(self, name: str) -> bool:
        """True when the file itself has ``name`` (optional tables read as empty when it does not)."""
        return name in self._raw_tables()

    def bounds(self) -> tuple[float | None, float | None]:
        """(start, last sample) in unix seconds over every timed table.

        A windowed session (a snapshot of its window) computes them once; a whole session reads
        them anew each time, as the file may be growing."""
        if self.window is not None:
            if self._bounds is None:
                self._bounds = self._read_bounds()
            return self._bounds
        return self._read_bounds()

    def _read_bounds(self) -> tuple[float | None, float | None]:
        meta = self.meta()
        starts, ends = [], []
        rolled = self.window is None and summaries.up_to_date(self.db)  # rollups span the whole file
        for table, col in (
            ("steps", "t_unix_s"), ("events", "t_unix_s"), ("gpu_samples", "t_unix_s"),
            ("allocator_samples", "t_unix_s"), ("requests", "t_finished_unix_s"),
            ("startup_memory", "t_unix_s"),
        ):
            if table == "steps" and rolled:  # the rollups hold the steps' first and last time
                row = self.rows(f"SELECT MIN(t_lo), MAX(t_hi) FROM {summaries.ROLLUP} "
                                f"WHERE level = {summaries.LEVELS_S[-1]!r}")[0]
            else:
                row = self.rows(f"SELECT MIN({col}), MAX({col}) FROM {table}")[0]
            if row[0] is not None:
                starts.append(row[0])
                ends.append(row[1])
        start = meta.get("started_unix_s") or (min(starts) if starts else None)
        end = max(ends) if ends else None
        if start is not None and end is not None and end < start:
            end = start
        return start, end

    def table(self, name: str, where: str = "", params: tuple[Any, ...] = ()) -> pd.DataFrame:
        """A whole table (optionally filtered by a trusted SQL ``where`` clause) as a DataFrame."""
        if name not in TABLES:
            raise KeyError(name)
        sql = f"SELECT {', '.join(TABLES[name])} FROM {name} {where}"
        try:
            df = pd.read_sql_query(sql, self.db, params=params)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            raise SessionFormatError(f"{self.path}: damaged session file ({first_line(exc)})") from exc
        return df

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """First column of the first row of a query (None when empty)."""
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def numeric(self, name: str, where: str = "", params: tuple[Any, ...] = ()) -> pd.DataFrame:
        """A table of numbers only (``steps``) as float64 columns, NULL as NaN.

        About a third faster than ``table`` on a million rows: the rows go straight into one numpy
        array instead of through pandas' per-column object conversion.
        """
        cols = TABLES[name]
        rows = self.rows(f"SELECT {', '.join(cols)} FROM {name} {where}", params)
        try:
            arr = np.array(rows, dtype=np.float64).reshape(len(rows), len(cols))
        except (TypeError, ValueError) as exc:
            raise SessionFormatError(f"{self.path}: damaged session file (a non-number in {name}: "
                                     f"{first_line(exc)})") from exc
        return pd.DataFrame(arr, columns=list(cols))

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """All rows of a trusted query; a damaged file raises SessionFormatError."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise SessionFormatError(f"{self.path}: damaged session file ({first_line(exc)})") from exc
        except (OverflowError, MemoryError) as exc:
            raise SessionFormatError(f"{self.path}: damaged session file ({first_line(exc)})") from exc

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connections."""
        self.db.close()
        if self._raw is not None:
            self._raw.close()


def _num(x: Any) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _plausible(value: Any, lo: float, hi: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and lo <= value <= hi)


def _connect(p: Path, immutable: bool) -> sqlite3.Connection:
    uri = f"file:{quote(str(p.resolve()))}?" + ("immutable=1" if immutable else "mode=ro")
    conn = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
    conn.text_factory = _decode
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    try:
        check_version(version)
    except SessionFormatError as exc:
        conn.close()
        raise SessionFormatError(f"{p}: {exc}") from None
    return conn


WINDOW_TIMES: dict[str, tuple[str, str]] = {
    "steps": ("t_unix_s", "t_unix_s"), "requests": ("t_finished_unix_s", "t_finished_unix_s"),
    "prompt_blocks": ("t_unix_s", "t_unix_s"), "gpu_samples": ("t_unix_s", "t_unix_s"),
    "gpu_process_samples": ("t_unix_s", "t_unix_s"),
    "allocator_samples": ("t_unix_s", "t_unix_s"), "events": ("t_unix_s", "t_unix_s"),
    "kv_events": ("t_unix_s", "t_unix_s"), "gaps": ("t_start_unix_s", "t_end_unix_s"),
    "latency_buckets": ("t_unix_s", "t_unix_s"),
    **{t: ("t_unix_s", "t_unix_s") for t in ("preemptions", "kv_occupancy", "prompt_chunks",
                                             "kv_evictions", "kv_residency_hist", "tier_samples")},
}
"""Tables a time window restricts: (column that must be ≤ the window's end, column that must be ≥
its start). The others (meta, engines, processes, gpus, startup_memory) describe the whole run."""
STATE_EVENTS = ("engine_start", "kv_cache_config", "nvml_off", "allocator_off", "attach_start",
                "kv_connector", "kv_cache_metrics")
"""Event kinds that describe the run's set-up: a window keeps them when they happened before its end."""


def _window_sql(table: str, window: tuple[float, float] | None) -> str:
    if window is None or table not in WINDOW_TIMES:
        return ""
    lo, hi = float(window[0]), float(window[1])
    end_col, start_col = WINDOW_TIMES[table]
    cond = f'"{end_col}" <= {hi!r} AND "{start_col}" >= {lo!r}'
    if table == "events":
        kinds = ", ".join(f"'{k}'" for k in STATE_EVENTS)
        cond = f'({cond}) OR (kind IN ({kinds}) AND "t_unix_s" <= {hi!r})'
    return f" WHERE {cond}"


def _install_views(p: Path, conn: sqlite3.Connection,
                   window: tuple[float, float] | None = None) -> None:
    """Check every table and column; shadow each table by a TEMP view of its valid values (of
    the rows inside ``window``, unix seconds, for the timed tables)."""
    names = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type='table'")}
    for table, cols in TABLES.items():
        if table not in names:
            if table in OPTIONAL_TABLES:
                nulls = ", ".join(f'NULL AS "{c}"' for c in cols)
                conn.execute(f"CREATE TEMP VIEW {table} AS SELECT NULL AS rowid, {nulls} WHERE 0")
                continue
            raise SessionFormatError(f"{p}: damaged session file (table {table} is missing)")
        have = {r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")}
        missing = [c for c in cols if c not in have]
        if missing:
            raise SessionFormatError(f"{p}: damaged session file (table {table} has no column "
                                     f"{', '.join(missing)})")
        body = ", ".join(_view_column(table, c) for c in cols)
        conn.execute(f"CREATE TEMP VIEW {table} AS SELECT rowid AS rowid, {body} FROM main.{table}"
                     + _window_sql(table, window))
    conn.execute("PRAGMA query_only = 1")


def open_session(path: str | Path, window: tuple[float, float] | None = None) -> Session:
    """Open a session for reading; raises SessionFormatError with a one-line, user-facing reason.

    ``path`` is a session file or a folder of shards (one per host of a multi-node engine,
    ``profiler.session.shards``), which reads as one session. ``window`` (start, end) in unix seconds: every timed table reads only the rows of that window
    (``WINDOW_TIMES``; set-up events before its end stay), so the report and the diagnosis of the
    opened session are those of the window.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SessionFormatError(f"{p}: no such session file") from None
    except PermissionError:
        raise SessionFormatError(f"{p}: cannot read session file (permission denied)") from None
    except OSError as exc:
        raise SessionFormatError(f"{p}: cannot read session file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            merged = shards.merged_file(p, open_session)
        except OSError as exc:
            raise SessionFormatError(f"{p}: cannot read session folder ({exc.strerror or exc})") from None
        except sqlite3.DatabaseError as exc:
            raise SessionFormatError(f"{p}: cannot merge its shards ({first_line(exc)})") from exc
        session = open_session(merged, window)
        session.path, session.file = p, merged
        return session
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise SessionFormatError(f"{p}: not a session file ({what})")
    try:
        with p.open("rb") as fh:
            header = fh.read(16)
    except PermissionError:
        raise SessionFormatError(f"{p}: cannot read session file (permission denied)") from None
    except OSError as exc:
        raise SessionFormatError(f"{p}: cannot read session file ({exc.strerror or exc})") from None
    if len(header) < 16:
        raise SessionFormatError(f"{p}: not a kvscope session (file is empty or truncated)")
    if header != b"SQLite format 3\x00":
        raise SessionFormatError(f"{p}: not a kvscope session (not an SQLite file)")
    immutable = False
    try:
        try:
            conn = _connect(p, immutable=False)
        except sqlite3.OperationalError as first:
            # A WAL session in a folder we cannot write (or without access to its -shm): read the
            # file as it is, without the WAL index.
            try:
                conn = _connect(p, immutable=True)
                immutable = True
            except sqlite3.DatabaseError:
                raise first from None
        try:
            _install_views(p, conn, window)
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise SessionFormatError(f"{p}: damaged session file ({first_line(exc)})") from exc
    return Session(p, conn, immutable, window=window)
