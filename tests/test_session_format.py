"""Session file behaviour without an engine: live reads, many writers, crash durability."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

from profiler.analysis.diagnosis import diagnose
from profiler.session.reader import open_session
from profiler.session.schema import TABLES
from profiler.session.writer import FLUSH_INTERVAL_S, SessionWriter
from tests.support.waiting import wait_until
from tests.support.writers import committed_steps, step_row, write_steps, write_steps_until_killed

_step = step_row


def test_session_is_readable_while_being_written(tmp_path: Path) -> None:
    path = tmp_path / "live.kvscope"
    w = SessionWriter(path)
    for i in range(100):
        w.append("steps", _step(i))
    w.flush()
    reader = open_session(path)
    assert len(reader.table("steps")) == 100
    for i in range(50):
        w.append("steps", _step(i))
    # no flush() this time: the writer thread commits on its own within its flush interval
    wait_until(lambda: len(reader.table("steps")) == 150, 20 * FLUSH_INTERVAL_S + 5,
               "the writer thread to commit 50 more steps")
    w.close()


def test_many_processes_write_one_session(tmp_path: Path) -> None:
    path = str(tmp_path / "multi.kvscope")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_steps, args=(path, e, 2000)) for e in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    steps = open_session(path).table("steps")
    assert steps.groupby("engine_id").size().to_dict() == {0: 2000, 1: 2000, 2: 2000, 3: 2000}


def test_kill9_loses_at_most_the_last_flush(tmp_path: Path) -> None:
    path = str(tmp_path / "kill.kvscope")
    p = mp.get_context("spawn").Process(target=write_steps_until_killed, args=(path,))
    p.start()
    try:
        # kill only once the child has demonstrably committed several flushes' worth of rows
        wait_until(lambda: committed_steps(path) > 500, 60, "the child to commit 500 steps")
        assert p.is_alive(), p.exitcode
        seen = committed_steps(path)
    finally:
        killed_at = time.time()
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    steps = open_session(path).table("steps")
    assert len(steps) >= seen > 500  # nothing committed is lost
    assert killed_at - steps["t_unix_s"].max() < 2 * FLUSH_INTERVAL_S + 0.1


def test_every_table_documented_in_schema_md() -> None:
    doc = (Path(__file__).resolve().parent.parent / "profiler" / "session" / "SCHEMA.md").read_text()
    for table, cols in TABLES.items():
        assert f"`{table}`" in doc, table
        for col in cols:
            assert f"`{col}`" in doc, (table, col)


def test_a_non_number_in_steps_reads_as_null_with_a_note(tmp_path: Path) -> None:
    """A damaged value is left out (NULL) and named in one note; the rest of the session is used."""
    path = tmp_path / "damaged.kvscope"
    shutil.copy(Path(__file__).resolve().parent.parent / "sessions" / "kv_saturation.kvscope", path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE steps SET running = 'lots' WHERE rowid = 7")
    session = open_session(path)
    intact = session.numeric("steps", "WHERE rowid != 7")
    assert len(intact) == session.scalar("SELECT COUNT(*) FROM steps") - 1
    assert intact["running"].dtype == "float64"
    running = session.numeric("steps")["running"]
    assert running.isna().sum() == 1
    (note,) = session.notes()
    assert "\n" not in note and note.startswith("steps.running: ignored 1 value") and "rows 7" in note
    assert {f.code for f in diagnose(session)} == {"PREFIX_THRASH", "KV_SATURATION", "PREEMPTION_STORM"}
