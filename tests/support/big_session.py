"""Large sessions from real recorded steps: a source session replicated back to back in time."""

from __future__ import annotations

import math
from pathlib import Path

from profiler.session.reader import open_session
from profiler.session.schema import TABLES
from profiler.session.writer import connect

_TIMED = {
    "steps": "t_unix_s", "requests": "t_finished_unix_s", "prompt_blocks": "t_unix_s",
    "gpu_samples": "t_unix_s", "gpu_process_samples": "t_unix_s", "allocator_samples": "t_unix_s",
}
"""Tables replicated per copy, with the column shifted by the copy's offset."""

_ONCE = ("meta", "processes", "engines", "gpus", "startup_memory", "events")
"""Tables copied once (identity and start-up data)."""


def build_big_session(source: str | Path, dest: str | Path, n_steps: int) -> int:
    """Write ``dest`` with at least ``n_steps`` steps made of back-to-back copies of ``source``.

    Every copy keeps the real rows of the source (steps, requests, samples) and shifts their times
    by one source period, so the result looks like the same workload run many times in a row.
    Returns the number of steps written.
    """
    src = open_session(source)
    steps_n = src.scalar("SELECT COUNT(*) FROM steps")
    if not steps_n:
        raise ValueError(f"{source}: no steps to replicate")
    t0, t1 = src.conn.execute("SELECT MIN(t_unix_s), MAX(t_unix_s) FROM steps").fetchone()
    period_s = (t1 - t0) + (t1 - t0) / max(steps_n - 1, 1)
    copies = math.ceil(n_steps / steps_n)
    dest = Path(dest)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    out = connect(dest)
    out.execute("PRAGMA synchronous = OFF")
    out.execute("BEGIN")
    for table in _ONCE:
        rows = src.conn.execute(f"SELECT * FROM {table}").fetchall()
        out.executemany(_insert(table), rows)
    for table, col in _TIMED.items():
        rows = src.conn.execute(f"SELECT * FROM {table} ORDER BY {col}").fetchall()
        if not rows:
            continue
        idx = TABLES[table].index(col)
        rid = TABLES[table].index("request_id") if "request_id" in TABLES[table] else None
        for k in range(copies):
            shift_s = k * period_s
            out.executemany(_insert(table), (_shifted(r, idx, shift_s, rid, k) for r in rows))
    out.execute("COMMIT")
    ended = t0 + copies * period_s
    out.execute("INSERT OR REPLACE INTO meta VALUES ('ended_unix_s', ?)", (repr(ended),))
    written = out.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    out.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out.close()
    src.close()
    return int(written)


def _insert(table: str) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * len(TABLES[table]))})"


def _shifted(row: tuple, idx: int, shift_s: float, rid: int | None, copy: int) -> tuple:
    out = list(row)
    out[idx] = row[idx] + shift_s
    if rid is not None and copy:
        out[rid] = f"{row[rid]}~{copy}"
    return tuple(out)
