"""Damaged, hostile and unreadable session files (issue 11): every one gets a one-line error (exit 2)
or a correct report that says what it ignored (exit 0, strict JSON); never a traceback or a hang.

Part (a) runs each example of the issue through the real CLI; part (b) mutates copies of the
bundled sessions with hypothesis and calls the analysis and the dashboard data layer in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.data.reports import compute_kv_events
from dashboard.data.session import load_session
from profiler.analysis.diagnosis import diagnose
from profiler.analysis.report import build_report, format_text
from profiler.analysis.whatif import analyse, predictions
from profiler.cli.whatif import format_text as whatif_text
from profiler.errors import KvscopeError
from profiler.session import reader
from profiler.session.reader import open_session
from profiler.session.schema import TABLES
from tests.support.engine import ROOT, kvscope, kvscope_here

SESSIONS = ROOT / "sessions"
THRASH = SESSIONS / "prefix_thrash.kvscope"
MUTATED = ("prefix_thrash", "gpu_h200_oom_runtime", "gpu_h200_oom_startup", "healthy",
           "gpu_h200_fragmentation")
"""Bundled sessions the property tests mutate: prompt blocks, a runtime and a start-up OOM, a
session without the optional kv_events/gaps tables, allocator samples."""


def _strict(text: str) -> Any:
    def reject(name: str) -> Any:
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=reject)


def _copy(tmp_path: Path, name: str = "prefix_thrash", sql: str = "") -> Path:
    dest = tmp_path / f"{name}.kvscope"
    shutil.copyfile(SESSIONS / f"{name}.kvscope", dest)
    if sql:
        conn = sqlite3.connect(dest)
        conn.executescript(sql)
        conn.close()
    return dest


def _one_line_error(proc: subprocess.CompletedProcess[str], path: Path | str, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kvscope: ") and str(path) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _report_json(path: Path) -> dict[str, Any]:
    proc = kvscope_here("report", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return _strict(proc.stdout)


def _text_report(path: Path) -> str:
    proc = kvscope_here("report", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# --- (a) the examples, through the CLI -------------------------------------------------


@pytest.mark.parametrize("sql, words, command", [
    ("ALTER TABLE engines RENAME COLUMN block_size TO bs", ("engines", "block_size"), ("report",)),
    ("ALTER TABLE engines RENAME COLUMN block_size TO bs", ("engines", "block_size"),
     ("whatif", "--blocks", "64")),
    ("ALTER TABLE requests DROP COLUMN ttft_s", ("requests", "ttft_s"), ("report", "--json")),
    ("DROP TABLE requests", ("requests", "missing"), ("whatif", "--blocks", "64")),
])
def test_missing_column_or_table_is_one_line(tmp_path: Path, sql: str, words: tuple[str, ...],
                                             command: tuple[str, ...]) -> None:
    path = _copy(tmp_path, sql=sql)
    proc = kvscope_here(command[0], str(path), *command[1:])
    _one_line_error(proc, path, *words)


def test_block_size_zero_is_ignored_with_a_note(tmp_path: Path) -> None:
    path = _copy(tmp_path, sql="UPDATE engines SET block_size = 0")
    rep = _report_json(path)
    assert rep["engine"]["block_size"] is None
    assert any("engines.block_size" in n for n in rep["notes"])
    assert "engines.block_size" in _text_report(path)
    # what-if cannot run without a block size: one line, naming the file
    _one_line_error(kvscope_here("whatif", str(path), "--blocks", "64"), path,
                    "block size")


def test_infinite_kv_usage_is_ignored(tmp_path: Path) -> None:
    path = _copy(tmp_path, sql="UPDATE steps SET kv_usage_frac = 9e999")
    rep = _report_json(path)
    assert (rep["kv_cache"]["peak_usage_frac"], rep["kv_cache"]["mean_usage_frac"]) == (None, None)
    assert any(n.startswith("steps.kv_usage_frac: ignored 644 values") for n in rep["notes"])


def test_null_device_index_drops_that_gpu(tmp_path: Path) -> None:
    path = _copy(tmp_path, "gpu_h200_healthy", "UPDATE gpus SET device_index = NULL")
    rep = _report_json(path)
    assert rep["gpus"] == []
    assert any(n.startswith("gpus:") for n in rep["notes"])
    _text_report(path)


@pytest.mark.parametrize("value", ['"yesterday"', "1e400"])
def test_bad_start_time_in_meta(tmp_path: Path, value: str) -> None:
    path = _copy(tmp_path, sql=f"UPDATE meta SET value = '{value}' WHERE key = 'started_unix_s'")
    rep = _report_json(path)
    start = rep["session"]["started_at_unix_s"]
    assert start is None or 1e9 < start < 1e10  # falls back to the first sample
    assert "meta.started_unix_s: ignored (not a valid value)" in rep["notes"]
    if value == "1e400":
        _text_report(path)


@pytest.mark.parametrize("value", ['"yesterday"', "1e400", "-1e400", "NaN", "[1]", "-5", "true"])
def test_bad_start_time_in_process(tmp_path: Path, value: str) -> None:
    path = _copy(tmp_path, sql=f"UPDATE meta SET value = '{value}' WHERE key = 'started_unix_s'")
    session = open_session(path)
    try:
        rep = _strict(json.dumps(build_report(session), allow_nan=False))
        assert "meta.started_unix_s: ignored (not a valid value)" in rep["notes"]
        format_text(rep)
        predictions(analyse(session), [8, 64])
    finally:
        session.close()
    assert load_session(path).start_unix_s > 1e9


def test_text_nan_in_a_number_column(tmp_path: Path) -> None:
    path = _copy(tmp_path, sql="UPDATE steps SET prefix_hits_tokens = 'NaN' WHERE rowid % 2 = 0;"
                               "UPDATE requests SET ttft_s = 'NaN'")
    rep = _report_json(path)
    assert rep["latency_s"]["ttft_p50"] is None
    assert any(n.startswith("steps.prefix_hits_tokens: ignored 322 values") and "rows 2, 4, 6"
               in n for n in rep["notes"])
    assert "NaN" not in json.dumps(rep)
    assert "ignored" in _text_report(path)


@pytest.mark.parametrize("sql, key", [
    ("UPDATE steps SET prefix_hits_tokens = -5000", "steps.prefix_hits_tokens"),
    ("UPDATE steps SET prompt_tokens = -3, generation_tokens = -7", "steps.prompt_tokens"),
    ("UPDATE requests SET prompt_tokens = -100", "requests.prompt_tokens"),
    ("UPDATE engines SET gpu_memory_utilization = -61444135.22", "engines.gpu_memory_utilization"),
])
def test_impossible_values_are_not_reported_as_facts(tmp_path: Path, sql: str, key: str) -> None:
    path = _copy(tmp_path, sql=sql)
    rep = _report_json(path)
    assert any(n.startswith(key) for n in rep["notes"]), rep["notes"]
    rate = rep["prefix_cache"]["hit_rate"]
    assert rate is None or 0 <= rate <= 1
    text = json.dumps(rep)
    assert "-61444135" not in text and "-5000" not in text


def test_more_hits_than_queries_has_no_hit_rate(tmp_path: Path) -> None:
    path = _copy(tmp_path, "gpu_h200_healthy",
                 "UPDATE steps SET prefix_hits_tokens = prefix_queries_tokens * 2 + 1")
    rep = _report_json(path)
    assert rep["prefix_cache"]["hit_rate"] is None
    assert any(n.startswith("prefix_cache:") for n in rep["notes"])


def test_oom_runtime_recommendation_stays_a_fraction(tmp_path: Path) -> None:
    """A hostile OOM event (memory total 1 byte) must not produce ``0.85 → -61444135.22``."""
    path = _copy(tmp_path, "gpu_h200_oom_runtime",
                 "UPDATE events SET details_json = json_set(details_json, '$.memory.total_bytes', 1)"
                 " WHERE kind = 'oom'")
    rep = _report_json(path)
    for f in rep["findings"]:
        util = (f.get("settings") or {}).get("gpu_memory_utilization")
        assert util is None or 0 < util <= 1, f
        assert "→ -" not in (f.get("recommendation") or ""), f


@pytest.fixture
def open_dir() -> Any:
    """A folder every user can reach (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="kvscope-bad-"))
    folder.chmod(0o755)
    yield folder
    for p in (folder, *folder.rglob("*")):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_file_is_one_line(open_dir: Path) -> None:
    path = _copy(open_dir)
    path.chmod(0)
    proc = _as_nobody("report", str(path))
    _one_line_error(proc, path, "permission denied")


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.kvscope"
    os.mkfifo(fifo)
    for command in (("report", "--json"), ("whatif", "--blocks", "8")):
        proc = kvscope(command[0], str(fifo), *command[1:], timeout_s=60)
        _one_line_error(proc, fifo, "FIFO")
    with pytest.raises(KvscopeError, match="FIFO"):
        load_session(fifo)


def test_device_and_directory_are_one_line(tmp_path: Path) -> None:
    _one_line_error(kvscope_here("report", "/dev/null"), "/dev/null", "device")
    _one_line_error(kvscope_here("report", str(tmp_path)), tmp_path, "directory")


def _wal_copy(folder: Path) -> Path:
    folder.mkdir()
    path = _copy(folder)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an unprivileged user (root reads any file, so permissions need another user)."""
    if os.geteuid() != 0:
        return kvscope(*args, timeout_s=120)
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot drop privileges")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    env["HOME"] = "/tmp"
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "profiler.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_wal_session_in_read_only_folder_opens(open_dir: Path) -> None:
    path = _wal_copy(open_dir / "shared")
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        proc = _as_nobody("report", "--json", str(path))
        assert proc.returncode == 0, proc.stderr
        assert _strict(proc.stdout)["steps"] == 644
        proc = _as_nobody("whatif", str(path), "--blocks", "40", "133")
        assert proc.returncode == 0, proc.stderr
    finally:
        path.parent.chmod(0o755)


def test_wal_fallback_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback itself, in-process (root can write any folder): the read-only open fails the
    way it does without a writable ``-shm``, and the session opens immutable."""
    path = _wal_copy(tmp_path / "shared")
    real = reader._connect

    def refuse(p: Path, immutable: bool) -> sqlite3.Connection:
        if not immutable:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(p, immutable)

    monkeypatch.setattr(reader, "_connect", refuse)
    session = open_session(path)
    try:
        assert session.immutable
        assert build_report(session)["steps"] == 644
    finally:
        session.close()


# --- security: session text is data, never markup or terminal control ---------------------------

HOSTILE = "![x](http://127.0.0.1:9/track.png) <img src=http://127.0.0.1:9/t.png> \x1b[2J\x1b]0;pwned\x07"


def test_text_report_strips_terminal_escapes(tmp_path: Path) -> None:
    path = _copy(tmp_path, sql=f"UPDATE meta SET value = '{json.dumps(HOSTILE)}' WHERE key = 'model';"
                               f"UPDATE gpus SET name = '{HOSTILE}'")
    out = _text_report(path)
    assert "\x1b" not in out and "\x07" not in out
    assert "track.png" in out  # the text itself is shown, as text
    rep = _report_json(path)
    assert rep["session"]["model"] == HOSTILE  # JSON keeps the value (escaped by JSON itself)


# --- (b) property tests: mutated copies of real sessions ----------------------------------------

VALUES = ("'NaN'", "9e999", "-9e999", "1e300", "-1", "-1e18", "'text'", "X'00ff'", "0",
          str(2**62), "NULL", "0.5")
"""SQL literals written over a column: text NaN, ±Inf, huge, negative, text, a blob, ..."""


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(("drop_column", "rename_column", "drop_table", "set_value",
                                 "set_value", "set_value", "set_row", "meta", "truncate", "bytes")))
    table = draw(st.sampled_from(sorted(TABLES)))
    col = draw(st.sampled_from(TABLES[table]))
    if kind in ("drop_column", "rename_column"):
        return kind, (table, col)
    if kind == "drop_table":
        return kind, table
    if kind in ("set_value", "set_row"):
        return kind, (table, col, draw(st.sampled_from(VALUES)))
    if kind == "meta":
        key = draw(st.sampled_from(("started_unix_s", "ended_unix_s", "model", "vllm_version",
                                    "command", "exit_code", "incomplete_reason")))
        value = draw(st.sampled_from(('"yesterday"', "1e400", "-1e400", "NaN", "[1, {}]", "null",
                                      "{\"a\": 1}", "-5", "\"\\u001b[2J\"", "not json")))
        return kind, (key, value)
    return kind, (draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=64)))


def _apply(path: Path, mutation: tuple[str, Any]) -> None:
    kind, arg = mutation
    if kind in ("truncate", "bytes"):
        frac, data = arg
        size = path.stat().st_size
        offset = int(frac * size)
        if kind == "truncate":
            os.truncate(path, offset)
        else:
            with path.open("r+b") as fh:
                fh.seek(offset)
                fh.write(data)
        return
    sql = {
        "drop_column": lambda a: f'ALTER TABLE {a[0]} DROP COLUMN "{a[1]}"',
        "rename_column": lambda a: f'ALTER TABLE {a[0]} RENAME COLUMN "{a[1]}" TO "{a[1]}_x"',
        "drop_table": lambda a: f"DROP TABLE {a}",
        "set_value": lambda a: f'UPDATE {a[0]} SET "{a[1]}" = {a[2]}',
        "set_row": lambda a: f'UPDATE {a[0]} SET "{a[1]}" = {a[2]} WHERE rowid IN '
                             f"(SELECT MIN(rowid) FROM {a[0]})",
        "meta": lambda a: f"INSERT OR REPLACE INTO meta VALUES ('{a[0]}', '{a[1]}')",
    }[kind](arg)
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql)
        conn.commit()
    except sqlite3.DatabaseError:
        # SQLite refuses some changes (dropping an indexed or key column): fall back to a rename
        if kind == "drop_column":
            try:
                conn.execute(sql.replace("DROP COLUMN", "RENAME COLUMN") + f' TO "{arg[1]}_x"')
                conn.commit()
            except sqlite3.DatabaseError:
                pass  # already gone (an earlier mutation)
    finally:
        conn.close()


def _in_process(path: Path) -> list[str]:
    """Every analysis the CLI and the dashboard run; returns the outcomes (``ok``/error text).
    The dashboard's ``compute_report``/``compute_whatif`` are the CLI's own ``build_report`` +
    ``diagnose`` and ``analyse`` (dashboard/data/reports.py), run here once through the CLI path."""
    outcomes = []
    for run in (_cli_report, _cli_whatif, lambda p: load_session(p), compute_kv_events):
        try:
            run(path)
            outcomes.append("ok")
        except KvscopeError as exc:
            assert "\n" not in str(exc), str(exc)
            outcomes.append(str(exc))
    return outcomes


def _cli_report(path: Path) -> None:
    session = open_session(path)
    try:
        rep = build_report(session, findings=[f.as_dict() for f in diagnose(session)])
        _strict(json.dumps(rep, allow_nan=False))
        format_text(rep)
    finally:
        session.close()


def _cli_whatif(path: Path) -> None:
    session = open_session(path)
    try:
        w = analyse(session)
        obj = predictions(w, [1, 16, 40, 10_000])
        _strict(json.dumps(obj, allow_nan=False))
        whatif_text(obj)
    finally:
        session.close()


FAST = settings(deadline=None, max_examples=40, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FAST
@given(name=st.sampled_from(MUTATED), mutation=mutations())
def test_mutated_sessions_raise_only_kvscope_errors(tmp_path: Path, name: str,
                                                    mutation: tuple[str, Any]) -> None:
    path = tmp_path / f"{name}.kvscope"
    path.unlink(missing_ok=True)
    shutil.copyfile(SESSIONS / f"{name}.kvscope", path)
    _apply(path, mutation)
    _in_process(path)


@settings(deadline=None, max_examples=30, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(MUTATED), mutations=st.lists(mutations(), min_size=2, max_size=5))
def test_several_mutations_at_once(tmp_path: Path, name: str,
                                   mutations: list[tuple[str, Any]]) -> None:
    path = tmp_path / f"{name}.kvscope"
    path.unlink(missing_ok=True)
    shutil.copyfile(SESSIONS / f"{name}.kvscope", path)
    for m in mutations:
        if path.stat().st_size >= 100:
            _apply(path, m)
    _in_process(path)


CLI_CASES = [
    ("gpu_h200_oom_runtime", ("set_value", ("events", "details_json", "'{\"memory\": 5}'")),
     ("report", "--json")),
    ("healthy", ("drop_table", "steps"), ("report",)),
    ("prefix_thrash", ("truncate", (0.5, b"x")), ("report", "--json")),
    ("gpu_h200_oom_startup", ("bytes", (0.3, bytes(range(64)))), ("report",)),
    ("prefix_thrash", ("set_value", ("prompt_blocks", "block_hashes", "X'00ff'")),
     ("whatif", "--blocks", "8", "64", "--json")),
]


@pytest.mark.parametrize("name, mutation, command", CLI_CASES)
def test_mutated_sessions_through_the_cli(tmp_path: Path, name: str, mutation: tuple[str, Any],
                                          command: tuple[str, ...]) -> None:
    path = tmp_path / f"{name}.kvscope"
    shutil.copyfile(SESSIONS / f"{name}.kvscope", path)
    _apply(path, mutation)
    if mutation[0] == "truncate":  # a real process with a timeout: proves no hang
        proc = kvscope(command[0], str(path), *command[1:], timeout_s=60)
    else:
        proc = kvscope_here(command[0], str(path), *command[1:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 0:
        if "--json" in command:
            _strict(proc.stdout)
    else:
        _one_line_error(proc, path)


def test_unchanged_bundled_sessions_have_no_notes() -> None:
    for path in sorted(SESSIONS.glob("*.kvscope")):
        session = open_session(path)
        try:
            assert session.notes() == [], path
        finally:
            session.close()


def test_mode_000_in_process(tmp_path: Path) -> None:
    """chmod 000 as a mutation: root still reads it; anyone else gets the one-line error."""
    path = _copy(tmp_path)
    path.chmod(0)
    try:
        outcomes = _in_process(path)
        if os.geteuid() != 0:
            assert all("permission denied" in o for o in outcomes), outcomes
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# --- the dashboard: one message on every page for the bad session, the good one unaffected -------

PAGES = ("overview", "timeline", "kv_cache", "memory", "requests", "replay", "whatif",
         "kv_events", "compare", "live")


@pytest.mark.parametrize("damage", [
    "ALTER TABLE engines RENAME COLUMN block_size TO bs",  # cannot be opened
    "UPDATE steps SET kv_usage_frac = 9e999, running = 'NaN'; UPDATE gpus SET device_index = NULL;"
    "UPDATE engines SET block_size = 0; UPDATE meta SET value = '\"yesterday\"' "
    "WHERE key = 'started_unix_s'",  # opens, with impossible values
])
@pytest.mark.browser
def test_dashboard_pages_with_a_damaged_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                damage: str) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.support.dashboard import APP, go

    bad = _copy(tmp_path, sql=damage)
    good = SESSIONS / "healthy.kvscope"
    monkeypatch.setenv("KVSCOPE_UI_SESSIONS", os.pathsep.join((str(bad), str(good))))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    opens = "RENAME" not in damage
    for page in PAGES:
        go(at, page)  # asserts no exception
        errors = [e.value for e in at.error]
        if opens:
            assert not errors, (page, errors)
        elif page != "live":  # Live follows a recording and reads it in its own fragment
            assert len(errors) == 1, (page, errors)
            assert "engines" in errors[0] and "block_size" in errors[0], errors
    # the other session still works on every page
    at.sidebar.selectbox[0].set_value(at.sidebar.selectbox[0].options[1]).run()
    for page in PAGES:
        go(at, page)
        errors = [e.value for e in at.error]
        if page == "compare" and not opens:  # its B side is the damaged session: said once
            assert len(errors) == 1 and "prefix_thrash" in errors[0], errors
        else:
            assert not errors, (page, errors)
