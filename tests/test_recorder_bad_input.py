"""Bad session files and bad commands give one clear line and a non-zero exit, never a traceback.

``report`` runs in this process (an escaped exception fails the test as a traceback would), except
on the cut file, where a real process with a timeout proves it cannot hang; ``record`` runs its
program for real."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from profiler.session.schema import SCHEMA_VERSION
from profiler.session.writer import SessionWriter
from tests.support.engine import kvscope, kvscope_here


def _small_session(path: Path) -> Path:
    w = SessionWriter(path)
    w.set_meta(started_unix_s=1.0)
    for i in range(2000):
        w.append("steps", (1, 1.0 + i, 1, 0, 0.5, 10, 5, 0, 0, 0, 3, 4, 0, 0))
    w.event("engine_start", "engine ready")
    w.close()
    return path


def _assert_one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


def test_report_on_missing_file(tmp_path: Path) -> None:
    _assert_one_line_error(kvscope_here("report", str(tmp_path / "nope.kvscope")), "no such session file")


def test_report_on_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "garbage.kvscope"
    p.write_bytes(b"this is not sqlite at all, just some bytes\n" * 100)
    _assert_one_line_error(kvscope_here("report", str(p)), "not an SQLite file")


def test_report_on_truncated_session(tmp_path: Path) -> None:
    p = _small_session(tmp_path / "full.kvscope")
    data = p.read_bytes()
    cut = tmp_path / "cut.kvscope"
    cut.write_bytes(data[: len(data) // 3])
    _assert_one_line_error(kvscope("report", str(cut)), "damaged session file")


def test_report_on_corrupted_pages(tmp_path: Path) -> None:
    p = _small_session(tmp_path / "corrupt.kvscope")
    data = bytearray(p.read_bytes())
    for i in range(4096, len(data), 97):  # leave the header page, scramble every b-tree page
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    _assert_one_line_error(kvscope_here("report", str(p)), "damaged session file")


def test_report_refuses_newer_schema(tmp_path: Path) -> None:
    p = _small_session(tmp_path / "future.kvscope")
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    _assert_one_line_error(kvscope_here("report", str(p)), "newer than this kvscope reads")


def test_report_json_on_session_without_engine(tmp_path: Path) -> None:
    """A session that recorded no engine reports nulls, not invented numbers."""
    p = _small_session(tmp_path / "s.kvscope")
    out = kvscope_here("report", "--json", str(p))
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["steps"] == 2000
    assert rep["engine"]["num_gpu_blocks"] is None
    assert rep["memory"]["weights_bytes"] is None
    assert rep["prefix_cache"]["hit_rate"] == 0.5
    assert rep["session"]["complete"] is False


def test_record_passes_exit_code_through(tmp_path: Path) -> None:
    p = tmp_path / "exit.kvscope"
    out = kvscope("record", "--session", str(p), "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert out.returncode == 3
    rep = json.loads(kvscope_here("report", "--json", str(p)).stdout)
    assert rep["session"]["complete"] is True
    assert rep["events"]["exit"] == 1


def test_record_unknown_command_is_one_line(tmp_path: Path) -> None:
    out = kvscope("record", "--session", str(tmp_path / "x.kvscope"), "--", "/no/such/program")
    _assert_one_line_error(out, "could not start /no/such/program")


def test_record_refuses_future_session_file(tmp_path: Path) -> None:
    p = _small_session(tmp_path / "future.kvscope")
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = p.read_bytes()
    out = kvscope("record", "--session", str(p), "--", sys.executable, "-c", "pass")
    _assert_one_line_error(out, "newer than this kvscope reads")
    assert p.read_bytes() == before  # nothing recorded is lost or rewritten
