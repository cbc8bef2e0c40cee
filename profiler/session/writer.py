"""Per-process session writer: the hot path appends a tuple, a daemon thread commits batches.

Many processes (frontend, engine core, workers, the NVML sampler) write one session file at the
same time; SQLite's WAL plus a busy timeout serialises their small transactions. A writer never
raises into the engine: its own failures are reported once on stderr and retried.

A bad value never costs good rows: at flush every row is checked, ints outside SQLite's 64-bit
range and non-finite floats become NULL, and a row SQLite still refuses (wrong arity, a type it
cannot bind) is dropped on its own; each kind of problem is recorded once as an ``error`` event.
The connection is never left inside a transaction.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from profiler.session import summaries
from profiler.session.schema import TABLES, check_version, create_or_check

FLUSH_INTERVAL_S = 0.25
"""Commit cadence; a kill -9 loses at most this much (plus one commit) of data."""

MAX_PENDING_ROWS = 2_000_000
"""Rows kept in memory while the file is unwritable; older rows are dropped past this."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""SQLite's INTEGER range; Python ints outside it cannot be bound."""

_RETRIABLE = (sqlite3.OperationalError,)
"""Errors of the file (locked, disk full, I/O): the whole batch is kept and retried later."""

_INSERT = {t: f"INSERT INTO {t} VALUES ({', '.join('?' * len(c))})" for t, c in TABLES.items()}


def connect(path: str | Path) -> sqlite3.Connection:
    """Open a session file for writing: WAL, NORMAL sync, generous busy timeout; schema ensured."""
    conn = sqlite3.connect(
        str(path), timeout=30.0, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout = 30000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version:
        check_version(version)  # before anything that could rewrite a file we must not touch
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    create_or_check(conn)
    try:
        summaries.ensure(conn)
    except sqlite3.OperationalError:
        pass  # locked right now: the next writer (or the first reader) creates them
    return conn


class SessionWriter:
    """Buffered, thread-safe appender for one session file in this process."""

    def __init__(self, path: str | Path, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.path = str(path)
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._conn = connect(self.path)
        self._closed = False
        self._reported_error = False
        self._reported_summary = False
        self._problems: set[tuple[str, str, str]] = set()
        """(table, column, problem) already recorded as an ``error`` event."""
        self._wake = threading.Event()
        self._interval_s = flush_interval_s
        self._thread = threading.Thread(target=self._run, name="kvscope-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._closed

    def append(self, table: str, row: tuple[Any, ...]) -> None:
        """Queue one row (columns in ``schema.TABLES`` order); cheap enough for every engine step."""
        self._pending.append((table, row))

    def event(self, kind: str, message: str, engine_id: int | None = None, **details: Any) -> None:
        """Queue an event row and commit it now: events are rare and must survive a crash."""
        try:
            payload = json.dumps(details, default=str) if details else None
        except (TypeError, ValueError) as exc:  # a circular structure, a key json refuses
            payload = json.dumps({"unserialisable_details": repr(exc)})
        self.append("events", (time.time(), os.getpid(), engine_id, kind, message, payload))
        self.flush()

    def execute_now(self, sql: str, params: tuple[Any, ...] = ()) -> int | None:
        """Run one statement synchronously (start-up bookkeeping only); returns lastrowid."""
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.lastrowid

    def set_meta(self, **values: Any) -> None:
        """Upsert session metadata keys (values stored as JSON text)."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def set_meta_default(self, **values: Any) -> None:
        """Insert metadata keys that are not set yet (first writer wins)."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def flush(self) -> None:
        """Commit everything queued so far in one transaction; never raises.

        Bad values are nulled first; if SQLite still refuses the batch for a reason of its data,
        the rows go in one by one so that only the rows it refuses are dropped.
        """
        with self._lock:
            if self._closed:
                return
            n = len(self._pending)
            if n == 0:
                return
            notes: list[tuple[str, tuple[Any, ...]]] = []
            rows = [(t, self._clean(t, r, notes)) for t, r in
                    (self._pending.popleft() for _ in range(n))]
            rows += notes
            try:
                self._commit(rows)
            except _RETRIABLE as exc:
                self._rollback_quietly()
                self._requeue(rows)
                self._report(exc)
            except Exception:  # a row SQLite refuses: keep every other one
                self._rollback_quietly()
                self._commit_row_by_row(rows)
            finally:
                if self._conn.in_transaction:  # never leave BEGIN IMMEDIATE behind
                    self._rollback_quietly()

    def _commit(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        self._conn.execute("BEGIN IMMEDIATE")
        for table, batch in by_table.items():
            self._conn.executemany(_INSERT[table], batch)
        self._maintain(set(by_table))
        self._conn.execute("COMMIT")

    def _maintain(self, tables: set[str]) -> None:
        """Fold the batch into the session's summaries (``summaries.py``), in its transaction.

        A failure here costs the summaries only (a savepoint undoes them; the reader catches up
        later), never the rows: a locked file is retried with the batch as usual."""
        self._conn.execute("SAVEPOINT kvscope_summaries")
        try:
            summaries.maintain(self._conn, tables)
        except _RETRIABLE:
            raise
        except Exception as exc:  # a summary bug must not lose data
            self._conn.execute("ROLLBACK TO kvscope_summaries")
            if not self._reported_summary:
                self._reported_summary = True
                print(f"kvscope: {self.path}: summaries not updated ({type(exc).__name__}: {exc}); "
                      "they are rebuilt when the session is opened", file=sys.stderr)
        self._conn.execute("RELEASE kvscope_summaries")

    def _commit_row_by_row(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        """One transaction, one statement per row; a refused row is dropped and noted once."""
        notes: list[tuple[str, tuple[Any, ...]]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for table, row in rows:
                try:
                    self._conn.execute(_INSERT[table], row)
                except _RETRIABLE:
                    raise
                except Exception as exc:  # dropping this row alone is the point
                    self._note(table, "*", type(exc).__name__,
                               f"row dropped: {type(exc).__name__}: {exc}", row, notes)
            for table, row in notes:
                self._conn.execute(_INSERT[table], row)
            self._maintain({t for t, _ in rows} | {t for t, _ in notes})
            self._conn.execute("COMMIT")
        except Exception as exc:  # the file itself failed: keep the rows for the next flush
            self._rollback_quietly()
            self._requeue(rows + notes)
            self._report(exc)

    def _clean(self, table: str, row: tuple[Any, ...],
               notes: list[tuple[str, tuple[Any, ...]]]) -> tuple[Any, ...]:
        """``row`` with out-of-range ints and non-finite floats replaced by None."""
        try:
            for v in row:
                t = type(v)
                if (t is float and not math.isfinite(v)) or (
                        t is int and not INT64_MIN <= v <= INT64_MAX):
                    break
            else:
                return row
        except TypeError:  # not a sequence: the row-by-row pass drops it
            return row
        cols = TABLES.get(table, ())
        out = list(row)
        for i, v in enumerate(row):
            if isinstance(v, float) and not math.isfinite(v):
                kind, problem = "non-finite", f"non-finite float {v!r} stored as NULL"
            elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
                kind, problem = "int64", "int beyond SQLite's 64-bit range stored as NULL"
            else:
                continue
            out[i] = None
            self._note(table, cols[i] if i < len(cols) else str(i), kind, problem, v, notes)
        return tuple(out)

    def _note(self, table: str, column: str, kind: str, problem: str, value: Any,
              notes: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue one ``error`` event the first time this (table, column, kind) is seen."""
        key = (table, column, kind)
        if key in self._problems:
            return
        self._problems.add(key)
        text = repr(value)
        details = json.dumps({"table": table, "column": column,
                              "value": text if len(text) <= 200 else text[:200] + "..."})
        message = f"{table}.{column}: {problem} (further rows with this problem are not reported)"
        notes.append(("events", (time.time(), os.getpid(), None, "error", message, details)))

    def close(self) -> None:
        """Flush and close; safe to call twice (atexit also calls it)."""
        if self._closed:
            return
        self._wake.set()
        self.flush()
        with self._lock:
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval_s)
            try:
                self.flush()
            except Exception as exc:  # the writer must outlive any surprise
                self._report(exc)

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _requeue(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        keep = rows[-MAX_PENDING_ROWS:]
        self._pending.extendleft(reversed(keep))
        while len(self._pending) > MAX_PENDING_ROWS:
            self._pending.popleft()

    def _report(self, exc: BaseException) -> None:
        if not self._reported_error:
            self._reported_error = True
            print(f"kvscope: cannot write {self.path}: {exc} (will retry)", file=sys.stderr)


_writers: dict[str, SessionWriter] = {}
_writers_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child (vLLM forks its engine core and workers when CUDA is not yet initialised)
    inherits the parent's writers, queued rows and SQLite connection, but not their thread.
    The parent flushes its own rows; the child must start afresh and never touch that connection.
    """
    global _writers_lock
    _writers.clear()
    _writers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def get_writer(path: str | Path) -> SessionWriter:
    """The one writer of this process for ``path`` (created on first use)."""
    key = os.path.abspath(str(path))
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None or writer._closed:
            writer = SessionWriter(key)
            _writers[key] = writer
        return writer
