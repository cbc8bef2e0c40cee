"""``kvscope export``: Parquet tables and Perfetto traces of the bundled sessions (issue 15).

Parquet files are read back with pyarrow and compared with the session row by row; Perfetto
traces are decoded with the perfetto package's own protobuf classes and checked for structure
(tests/support/perfetto_check.py) and for values (every step's KV usage, running and waiting, every
request, preemption, OOM and gap). The HTML report is checked in a browser: test_export_html.py.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from profiler.export.parquet import export_parquet, schema_of
from profiler.export.perfetto_trace import export_perfetto, request_phases
from profiler.session.reader import open_session
from profiler.session.schema import TABLES
from tests.support.engine import ROOT, kvscope_here
from tests.support.perfetto_check import parse_trace

SESSIONS = ROOT / "sessions"
BUNDLED = sorted(p.stem for p in SESSIONS.glob("*.kvscope"))


def _copy(tmp_path: Path, name: str, sql: str = "") -> Path:
    dest = tmp_path / f"{name}.kvscope"
    shutil.copyfile(SESSIONS / f"{name}.kvscope", dest)
    if sql:
        conn = sqlite3.connect(dest)
        conn.executescript(sql)
        conn.close()
    return dest


@pytest.mark.parametrize("name", BUNDLED)
def test_parquet_holds_every_table_row_for_row(tmp_path: Path, name: str) -> None:
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        written = export_parquet(s, tmp_path / "out")
        assert [w.table for w in written] == list(TABLES)
        for w in written:
            t = pq.read_table(w.path)
            assert t.schema.equals(schema_of(w.table)), w.table
            want = s.rows(f"SELECT {', '.join(TABLES[w.table])} FROM {w.table} ORDER BY rowid"
                          if w.table != "meta" else "SELECT key, value FROM meta ORDER BY key")
            assert t.num_rows == len(want) == w.rows, w.table
            got = list(zip(*(t.column(c).to_pylist() for c in TABLES[w.table]), strict=True))
            assert got == [tuple(r) for r in want], w.table


def test_parquet_nulls_stay_null_and_impossible_values_leave_as_null(tmp_path: Path) -> None:
    path = _copy(tmp_path, "kv_saturation",
                 "UPDATE steps SET kv_usage_frac = 9e999 WHERE rowid = 7;"
                 "UPDATE steps SET running = 'lots' WHERE rowid = 9;")
    with open_session(path) as s:
        nulls = s.scalar("SELECT COUNT(*) FROM steps WHERE preempted_prefix_hits_tokens IS NULL")
        export_parquet(s, tmp_path / "pq")
    steps = pq.read_table(tmp_path / "pq" / "steps.parquet").to_pandas()
    assert pd.isna(steps.loc[6, "kv_usage_frac"]) and pd.isna(steps.loc[8, "running"])
    assert steps["kv_usage_frac"].notna().sum() == len(steps) - 1
    assert int(steps["preempted_prefix_hits_tokens"].isna().sum()) == nulls
    assert int(steps["running"].isna().sum()) == 1


def test_parquet_cli_refuses_a_file_as_folder(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.write_text("")
    out = kvscope_here("export", str(SESSIONS / "healthy.kvscope"), "--format", "parquet",
                       "--out", str(target))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not a folder" in out.stderr


def _step_function(samples: list[tuple[int, float]], ts: np.ndarray) -> np.ndarray:
    """The counter's value at each of ``ts`` (Perfetto holds a value until the next sample)."""
    t = np.array([s[0] for s in samples])
    v = np.array([s[1] for s in samples])
    k = np.searchsorted(t, ts, side="right") - 1
    assert (k >= 0).all()
    return v[k]


@pytest.mark.parametrize("name", ["kv_saturation", "gpu_h200_kv_pressure", "gpu_h200x2_tp2"])
def test_perfetto_counters_equal_every_step(tmp_path: Path, name: str) -> None:
    out = tmp_path / "t.pftrace"
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        stats = export_perfetto(s, out)
        steps = s.table("steps", "ORDER BY t_unix_s, rowid")
        eid = int(s.scalar("SELECT engine_id FROM engines"))
        requests = s.table("requests")
    trace = parse_trace(out)
    assert trace.process_of("KV cache usage").startswith(f"engine {eid}")
    ts = np.round(steps["t_unix_s"].to_numpy() * 1e9).astype(np.int64)
    for track, col, scale in (("KV cache usage", "kv_usage_frac", 100.0),
                              ("running requests", "running", 1.0),
                              ("waiting requests", "waiting", 1.0)):
        got = _step_function(trace.counters[track], ts)
        np.testing.assert_allclose(got, steps[col].to_numpy(dtype=float) * scale, err_msg=track)
    pre = [i for i in trace.instants if i[0] == "preemptions"]
    assert sum(int(i[3]["preemptions"]) for i in pre) == int(steps["preemptions"].sum())
    assert len(pre) == stats.preemption_instants == int((steps["preemptions"] > 0).sum())
    reqs = [sl for sl in trace.slices if sl.name.startswith("request ")]
    assert len(reqs) == len(requests) == stats.request_slices
    by_id = {sl.args["request_id"]: sl for sl in reqs}
    for r in requests.itertuples():
        sl = by_id[r.request_id]
        assert sl.depth == 0 and abs(sl.ts_ns + sl.dur_ns - r.t_finished_unix_s * 1e9) < 2e3
        assert abs(sl.dur_ns - r.e2e_s * 1e9) < 2e3
    phases = [sl for sl in trace.slices if sl.name in ("queued", "prefill", "decode")]
    assert phases and all(sl.depth == 1 for sl in phases)
    lanes = {sl.track for sl in reqs}
    assert len(lanes) == stats.lanes


def test_perfetto_gpu_memory_and_oom(tmp_path: Path) -> None:
    out = tmp_path / "t.pftrace"
    with open_session(SESSIONS / "gpu_h200_oom_runtime.kvscope") as s:
        export_perfetto(s, out)
        peaks = dict(s.rows("SELECT device_index, MAX(used_bytes) FROM gpu_samples "
                            "GROUP BY device_index"))
        ooms = s.rows("SELECT t_unix_s, message FROM events WHERE kind = 'oom' ORDER BY t_unix_s")
    trace = parse_trace(out)
    for dev, peak in peaks.items():
        track = next(n for n in trace.counters if n.startswith(f"GPU {dev} used"))
        assert trace.process_of(track) == "GPUs"
        assert max(v for _, v in trace.counters[track]) == peak
    got = [(ts, args["message"]) for track, name, ts, args in trace.instants if name == "OOM"]
    assert len(got) == len(ooms) > 0
    for (ts, msg), (t, want) in zip(got, ooms, strict=True):
        assert abs(ts - t * 1e9) < 2e3 and msg == want


def test_perfetto_gaps_are_slices_with_their_reason(tmp_path: Path) -> None:
    with open_session(SESSIONS / "healthy.kvscope") as s:
        t0 = float(s.scalar("SELECT MIN(t_unix_s) FROM steps"))
    path = _copy(tmp_path, "healthy",
                 "CREATE TABLE IF NOT EXISTS gaps (engine_id INTEGER, t_start_unix_s REAL, "
                 "t_end_unix_s REAL, source TEXT, reason TEXT);"
                 f"INSERT INTO gaps VALUES (1, {t0 + 0.5!r}, {t0 + 1.5!r}, 'metrics', "
                 "'GET http://x/metrics timed out after 2 s');"
                 f"INSERT INTO gaps VALUES (1, {t0 + 1.0!r}, {t0 + 2.0!r}, 'kv_events', 'silent');")
    out = tmp_path / "t.pftrace"
    with open_session(path) as s:
        assert export_perfetto(s, out).gap_slices == 2
    gaps = [sl for sl in parse_trace(out).slices if sl.track == "gaps (no data)"]
    assert [g.name for g in gaps] == ["gap: metrics", "gap: kv_events"]
    assert gaps[0].args["reason"] == "GET http://x/metrics timed out after 2 s"
    assert abs(gaps[0].dur_ns - 1e9) < 2e3


def test_request_phases_are_laid_back_from_the_finish_inside_the_request() -> None:
    phases = request_phases(100.0, 10.0, queued_s=3.0, prefill_s=1.0, decode_s=5.0)
    assert phases == [("queued", 91.0, 94.0), ("prefill", 94.0, 95.0), ("decode", 95.0, 100.0)]
    clipped = request_phases(100.0, 4.0, queued_s=3.0, prefill_s=1.0, decode_s=2.5)
    assert clipped[0] == ("queued", 96.0, 96.5) and clipped[-1] == ("decode", 97.5, 100.0)
    assert [p for p, *_ in request_phases(100.0, 4.0, None, None, 1.0)] == ["decode"]


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("fmt,out_name", [("parquet", "pq"), ("perfetto", "t.pftrace")])
def test_export_cli_on_every_bundled_session(tmp_path: Path, fmt: str, out_name: str,
                                             name: str) -> None:
    out = tmp_path / out_name
    res = kvscope_here("export", str(SESSIONS / f"{name}.kvscope"), "--format", fmt,
                       "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith(f"kvscope: {out}: ") and res.stderr.count("\n") == 1
    if fmt == "perfetto":
        trace = parse_trace(out)
        assert "events" in trace.track_names.values()
    else:
        assert sorted(p.stem for p in out.iterdir()) == sorted(TABLES)


def test_export_cli_bad_session_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.kvscope"
    bad.write_bytes(b"not a session at all, just bytes")
    res = kvscope_here("export", str(bad), "--format", "perfetto", "--out", str(tmp_path / "t"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a kvscope session" in res.stderr
    assert not (tmp_path / "t").exists()
