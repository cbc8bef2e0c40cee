"""The session writer on bad values: good rows are always kept, flush never raises, one event per
kind of problem, and the file is never left locked for the other writers of the session."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.session.writer import SessionWriter


def step(i: int, value: object = 0) -> tuple[object, ...]:
    """A steps row whose ``prefix_queries_tokens`` is ``value``."""
    return (1, 1000.0 + i, 1, 0, 0.5, value, 0, None, None, 0, 10, 20, 0, 0)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchall()


def errors(path: Path) -> list[tuple[str, str]]:
    return [(m, d) for m, d in rows(path, "SELECT message, details_json FROM events WHERE kind='error'")]


def test_int_beyond_64_bits_among_good_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path, flush_interval_s=60)  # only explicit flushes
    for i in range(100):
        w.append("steps", step(i, 2**70 if i == 50 else i))
    w.append("allocator_samples", (1000.0, 7, 0, 2**70, 5, 5, 0, 1))
    w.event("oom", "CUDA out of memory", None, needed_bytes=2**70)  # event() flushes
    assert len(rows(path, "SELECT * FROM steps")) == 100
    assert rows(path, "SELECT prefix_queries_tokens FROM steps WHERE t_unix_s = 1050.0") == [(None,)]
    assert rows(path, "SELECT SUM(prefix_queries_tokens) FROM steps")[0][0] == sum(range(100)) - 50
    assert rows(path, "SELECT allocated_bytes, reserved_bytes FROM allocator_samples") == [(None, 5)]
    assert len(rows(path, "SELECT * FROM events WHERE kind='oom'")) == 1
    errs = errors(path)
    assert len(errs) == 2, errs  # one per (table, column, problem), not one per row
    assert "steps.prefix_queries_tokens: int beyond SQLite's 64-bit range" in errs[0][0]
    assert json.loads(errs[0][1])["value"] == str(2**70)
    # the same problem again is not reported again; the writer is still usable
    w.append("steps", step(200, 2**80))
    w.append("steps", step(201, 7))
    w.flush()
    assert len(rows(path, "SELECT * FROM steps")) == 102 and len(errors(path)) == 2
    assert not w._conn.in_transaction
    # a second writer (another process of the session) is not locked out
    other = subprocess.run(
        [sys.executable, "-c",
         "import sys; from profiler.session.writer import SessionWriter; "
         "w = SessionWriter(sys.argv[1]); w.append('steps', (2, 1.0, 0, 0, 0.1, 1, 0, None, None, "
         "0, 0, 0, 0, 0)); w.close()", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert other.returncode == 0 and "locked" not in other.stderr, other.stderr
    assert rows(path, "SELECT COUNT(*) FROM steps WHERE engine_id = 2") == [(1,)]
    w.close()


def test_non_finite_floats_become_null(tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path, flush_interval_s=60)
    vals = [0.25, math.nan, math.inf, -math.inf, 0.75]
    for i, v in enumerate(vals):
        w.append("steps", (1, 1000.0 + i, 1, 0, v, 1, 0, None, None, 0, 0, 0, 0, 0))
    w.append("gpu_samples", (math.inf, 0, 10, 20))
    w.close()
    got = [r[0] for r in rows(path, "SELECT kv_usage_frac FROM steps ORDER BY t_unix_s")]
    assert got == [0.25, None, None, None, 0.75]
    assert rows(path, "SELECT * FROM gpu_samples") == [(None, 0, 10, 20)]
    msgs = [m for m, _ in errors(path)]
    assert len(msgs) == 2 and all("non-finite float" in m for m in msgs), msgs


def test_rows_sqlite_refuses_are_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path, flush_interval_s=60)
    w.append("steps", step(0))
    w.append("steps", (1, 2.0))  # wrong arity
    w.append("steps", step(1, {"a": 1}))  # a type sqlite3 cannot bind
    w.append("no_such_table", (1,))
    w.append("steps", step(2))
    w.flush()
    w.event("circular", "details json refuses", None, me=(d := {}), other=d.setdefault("d", d))
    w.close()
    assert len(rows(path, "SELECT * FROM steps")) == 2
    assert len(errors(path)) == 2  # steps: ProgrammingError (arity and type); no_such_table
    assert len(rows(path, "SELECT * FROM events WHERE kind='circular'")) == 1


def test_locked_file_keeps_rows_for_later(tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path, flush_interval_s=60)
    w._conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    w.append("steps", step(0, 2**70))
    w.append("steps", step(1))
    w.flush()  # locked: nothing is lost, nothing raises
    assert not w._conn.in_transaction and len(w._pending) == 3  # 2 rows + the error event
    blocker.execute("ROLLBACK")
    blocker.close()
    w.close()
    assert len(rows(path, "SELECT * FROM steps")) == 2 and len(errors(path)) == 1


GOOD = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
BAD = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1),
                st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.lists(GOOD, min_size=4, max_size=4),
                          st.lists(BAD, min_size=1, max_size=3)), min_size=1, max_size=30))
def test_every_good_row_is_stored(tmp_path: Path, spec: list[tuple[bool, list[object], list[object]]]) -> None:
    path = tmp_path / f"p{abs(hash(str(spec)))}.kvscope"
    path.unlink(missing_ok=True)
    w = SessionWriter(path, flush_interval_s=60)
    expected = []
    for i, (bad, good_vals, bad_vals) in enumerate(spec):
        vals = list(good_vals)
        if bad:
            for j, b in enumerate(bad_vals):
                vals[j] = b
        w.append("gaps", (i, *vals))
        expected.append(bad)
        if i % 7 == 0:
            w.flush()
    w.close()
    got = rows(path, "SELECT engine_id FROM gaps ORDER BY engine_id")
    assert [r[0] for r in got] == list(range(len(spec)))  # bad values never cost a row
    stored = rows(path, "SELECT * FROM gaps ORDER BY engine_id")
    for (bad, _good, bad_vals), row in zip(spec, stored, strict=True):
        for j, v in enumerate(row[1:]):
            if bad and j < len(bad_vals):
                assert v is None
    assert bool(errors(path)) == any(expected)
