"""Session writers run in spawned processes by tests: this module imports only the writer, so that
a spawned child starts in a fraction of a second (the test modules import pandas and more)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from profiler.session.writer import SessionWriter


def step_row(i: int, engine_id: int = 1) -> tuple:
    """One ``steps`` row stamped now."""
    return (engine_id, time.time(), 1, 0, 0.5, 10, 5, 0, 0, 0, 3, 4, 0, 0)


def write_steps(path: str, engine_id: int, n: int) -> None:
    """Append ``n`` steps for ``engine_id`` and close."""
    w = SessionWriter(path)
    for i in range(n):
        w.append("steps", step_row(i, engine_id))
        if i % 100 == 0:
            time.sleep(0.01)
    w.close()


def write_steps_until_killed(path: str) -> None:
    """Append a step every millisecond until the process is killed."""
    w = SessionWriter(path)
    i = 0
    while True:
        w.append("steps", step_row(i))
        i += 1
        time.sleep(0.001)


def committed_steps(path: str | Path) -> int:
    """Rows of ``steps`` committed so far, read without writing (0 before the table exists)."""
    if not Path(path).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
    except sqlite3.Error:
        return 0
