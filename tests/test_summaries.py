"""Summaries kept in the session (issue 15): rollups, checked-value watermarks and the stored report.

Every summary is compared with the same aggregate computed from the rows themselves through the
reader's checked views; the writer's incremental folding with the one-shot build of an older
session; the stored report with the report computed from scratch.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dashboard.data.session import load_session
from dashboard.data.steps import View, query_buckets, rebucket
from profiler.analysis.diagnosis import diagnose
from profiler.analysis.report import build_report
from profiler.analysis.summarized import report_and_findings
from profiler.session import summaries as sm
from profiler.session.reader import open_session
from profiler.session.writer import SessionWriter
from tests.support.big_session import build_big_session
from tests.support.engine import ROOT, kvscope_here

SESSIONS = ROOT / "sessions"
SOURCE = SESSIONS / "kv_saturation.kvscope"
LARGE = 20_000
"""Steps of the "large" sessions here: the threshold is lowered to it, so the tests stay quick."""


@pytest.fixture(autouse=True)
def _small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.data import steps

    monkeypatch.setattr(sm, "STORE_MIN_STEPS", LARGE)
    monkeypatch.setattr(steps, "ROLLUP_MIN_BUCKETS", 16)


def _direct(path: Path, level: float) -> list[tuple[Any, ...]]:
    """The finest rollup's aggregates computed from the steps through the reader's views."""
    with open_session(path) as s:
        return s.rows(
            f"SELECT COALESCE(engine_id, -1), COALESCE(CAST(t_unix_s / {level!r} AS INTEGER), -1), "
            "COUNT(*), COUNT(running), MIN(kv_usage_frac), MAX(kv_usage_frac), MAX(running), "
            "MIN(waiting), SUM(prompt_tokens), COUNT(prompt_tokens), SUM(preemptions), "
            "MIN(rowid), MAX(rowid) FROM steps GROUP BY 1, 2 ORDER BY 1, 2")


def _stored(path: Path, level: float) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        return c.execute(
            f"SELECT engine_id, bucket, n_rows, n_scheduled, kv_usage_frac_min, kv_usage_frac_max, "
            "running_max, waiting_min, prompt_tokens_sum, prompt_tokens_n, preemptions_sum, "
            f"rowid_lo, rowid_hi FROM {sm.ROLLUP} WHERE level = ? ORDER BY 1, 2", (level,)).fetchall()


def test_writer_keeps_rollups_and_checks_current_batch_by_batch(tmp_path: Path) -> None:
    """Real recorded steps written in many small batches, with impossible values among them:
    after every flush the rollups equal the checked steps, and the notes need no scan."""
    path = tmp_path / "w.kvscope"
    with open_session(SOURCE) as src:
        rows = src.conn.execute("SELECT * FROM steps ORDER BY rowid LIMIT 3000").fetchall()
    w = SessionWriter(path, flush_interval_s=3600)
    for i, row in enumerate(rows):
        row = list(row)
        if i == 100:
            row[4] = 7.5  # KV usage above 1: NULL for the reader, a note
        if i == 200:
            row[1] = None  # no time: the untimed bucket
        if i == 300:
            row[0] = None  # no engine
        w.append("steps", tuple(row))
        if i % 250 == 249:
            w.flush()
            for level in sm.LEVELS_S:
                assert _stored(path, level) == _direct(path, level), (i, level)
    w.close()
    for level in sm.LEVELS_S:
        assert _stored(path, level) == _direct(path, level), level
    with open_session(path) as s:
        assert sm.up_to_date(s.db)
        assert s.notes() == ["steps.kv_usage_frac: ignored 1 value (not a number in 0..1.001; "
                             "rows 101)"]


def test_an_older_session_is_summarised_once_and_stored(tmp_path: Path) -> None:
    path = tmp_path / "old.kvscope"
    shutil.copyfile(SOURCE, path)
    with open_session(path) as s:
        assert not sm.has_summaries(s.db) and not sm.up_to_date(s.db)
        notes_before = s.notes()
    assert sm.build_and_store(str(path))
    with open_session(path) as s:
        assert sm.up_to_date(s.db) and s.notes() == notes_before
    for level in sm.LEVELS_S:
        assert _stored(path, level) == _direct(path, level)


def test_rows_added_after_the_watermark_are_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "late.kvscope"
    shutil.copyfile(SOURCE, path)
    assert sm.build_and_store(str(path))
    with sqlite3.connect(path) as c:  # a row written by a writer that keeps no summaries
        c.execute("INSERT INTO steps SELECT * FROM steps WHERE rowid = 1")
        c.execute("UPDATE steps SET waiting = -4 WHERE rowid = (SELECT MAX(rowid) FROM steps)")
    with open_session(path) as s:
        assert not sm.up_to_date(s.db)  # the rollups are behind: readers use the steps
        assert [n.split(" (")[0] for n in s.notes()] == ["steps.waiting: ignored 1 value"]


def test_report_from_summaries_equals_the_report_from_steps(tmp_path: Path) -> None:
    path = tmp_path / "big.kvscope"
    n = build_big_session(SOURCE, path, LARGE)
    with open_session(path) as s:
        scratch = build_report(s, findings=[f.as_dict() for f in diagnose(s)])
    with open_session(path) as s:
        first, findings = report_and_findings(s, quiet=True)  # builds and stores
    with open_session(path) as s:
        assert sm.up_to_date(s.db)
        version = sm.data_version(s.db)
        assert sm.cached(s.db, "report", version) is not None
        again, _ = report_and_findings(s, quiet=True)
        totals = s.rows("SELECT COUNT(running), SUM(preemptions), SUM(prefix_queries_tokens), "
                        "SUM(prefix_hits_tokens), MAX(CASE WHEN running IS NOT NULL THEN "
                        "kv_usage_frac END), SUM(finished) FROM steps")[0]
        rolled = sm.step_totals(s.db)
    assert first["steps"] == n and first == again and findings == first["findings"]
    for key in ("steps", "preemptions", "requests_finished", "prefix_cache", "latency_s",
                "findings", "events", "engine", "notes"):
        assert first[key] == scratch[key], key
    assert first["kv_cache"]["peak_usage_frac"] == scratch["kv_cache"]["peak_usage_frac"]
    assert first["kv_cache"]["mean_usage_frac"] == pytest.approx(
        scratch["kv_cache"]["mean_usage_frac"], rel=1e-12)
    assert (rolled[0], rolled[1], rolled[2], rolled[3], rolled[6], rolled[8]) == totals
    # a changed session is a different version: the stored report is not used
    with sqlite3.connect(path) as c:
        c.execute("INSERT OR REPLACE INTO meta VALUES ('incomplete_reason', '\"cut\"')")
    with open_session(path) as s:
        assert sm.cached(s.db, "report", sm.data_version(s.db)) is None
        assert report_and_findings(s, quiet=True)[0]["session"]["complete"] is False


def test_cli_report_builds_once_with_progress_then_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "big.kvscope"
    build_big_session(SOURCE, path, LARGE)
    first = kvscope_here("report", "--json", str(path))
    assert first.returncode == 0
    assert "building summaries (once; stored in the session): rollups 100%" in first.stderr
    second = kvscope_here("report", "--json", str(path))
    assert second.returncode == 0 and second.stderr == ""
    assert json.loads(second.stdout) == json.loads(first.stdout)


def test_dashboard_summary_and_zoom_from_rollups_equal_the_steps(tmp_path: Path) -> None:
    path = tmp_path / "big.kvscope"
    build_big_session(SOURCE, path, 3 * LARGE)
    data = load_session(path)  # builds and stores the summaries, reads the rollups
    assert data.steps.width_s in sm.LEVELS_S
    # views on whole rollup buckets (the rollups bucket unix time by whole seconds)
    a = math.ceil(data.start_unix_s + 50) - data.start_unix_s
    with open_session(path) as s:
        for t0, t1, n in ((0.0, data.duration_s, 40), (a, a + 19.999, 20), (a, a + 2, 50)):
            view = View(t0, t1, n)
            got = data.buckets(view)
            raw = query_buckets(s, data.start_unix_s, view)
            # buckets aligned to the rollup grid agree exactly; compare per-view totals, maxima
            for col, agg in (("n_steps", "sum"), ("prompt_tokens", "sum"),
                             ("preemptions", "sum"), ("kv_usage_frac_max", "max"),
                             ("waiting_max", "max"), ("running_min", "min")):
                assert getattr(got[col], agg)() == getattr(raw[col], agg)(), (t0, t1, col)
    exact = View(0.0, data.duration_s, 400)
    with open_session(path) as s:
        whole = rebucket(query_buckets(s, data.start_unix_s, View(0.0, data.duration_s, 8192)),
                         exact)
    assert np.isclose(data.buckets(exact)["n_steps"].sum(), whole["n_steps"].sum())
    assert isinstance(data.steps.fine, pd.DataFrame) and len(data.steps.fine) < 20_000


def test_stored_report_is_read_back_only_while_current(tmp_path: Path) -> None:
    path = tmp_path / "big.kvscope"
    build_big_session(SOURCE, path, LARGE)
    assert sm.lookup_cached(str(path), "report") is None  # nothing stored yet
    with open_session(path) as s:
        report, _ = report_and_findings(s, quiet=True)
    stored = json.loads(sm.lookup_cached(str(path), "report") or "null")
    assert stored["steps"] == report["steps"] and stored["findings"] == report["findings"]
    with sqlite3.connect(path) as c:  # one more step, written without the writer
        c.execute("INSERT INTO steps SELECT * FROM steps WHERE rowid = 1")
    assert sm.lookup_cached(str(path), "report") is None
    assert sm.lookup_cached(str(tmp_path / "missing.kvscope"), "report") is None


def test_stored_whatif_curve_equals_the_replay(tmp_path: Path) -> None:
    from profiler.analysis.summarized import whatif
    from profiler.analysis.whatif import analyse, predictions

    path = tmp_path / "big.kvscope"
    build_big_session(SOURCE, path, LARGE)
    with open_session(path) as s:
        replayed = analyse(s)
        first = whatif(s)  # computes, stores
    with open_session(path) as s:
        stored = whatif(s)
    assert first.trace is not None and stored.trace is None  # read back, not replayed
    sizes = [1, 5, 20, 26, 40, 80]
    want = predictions(replayed, sizes)
    assert predictions(stored, sizes) == want and want["requests"] == len(replayed.trace.requests)
    assert np.array_equal(stored.curve.cum_hit_tokens, replayed.curve.cum_hit_tokens)
    assert np.array_equal(stored.curve.request_max_distance, replayed.curve.request_max_distance)
    assert stored.access_count == replayed.trace.accesses
    out = kvscope_here("whatif", str(path), "--blocks", *map(str, sizes), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == json.loads(json.dumps(want))


@pytest.mark.parametrize("name", ["kv_forensics", "kv_saturation"])
def test_stored_preemption_forensics_equal_fresh_ones(tmp_path: Path, name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A large session's forensics are stored (the table as Parquet) and read back with exactly
    the numbers, rows and dtypes computed from its rows; the dashboard's forensics and the report's
    ``preemption`` are those numbers. kv_forensics has the engine core's record, kv_saturation
    vLLM's counters only."""
    from dashboard.data.kv_whole import compute_forensics
    from profiler.analysis import preemption
    from profiler.analysis.summarized import PREEMPTION_CACHE, preemptions

    path = tmp_path / f"{name}.kvscope"
    shutil.copy(SESSIONS / f"{name}.kvscope", path)
    with open_session(path) as s:  # computed from the rows, never stored
        fresh = preemption.summarize(s, s.scalar("SELECT SUM(preemptions) FROM steps"))
        fresh_waiting = preemption.waiting_at(s, fresh.table)
    fresh_forensics = compute_forensics(path)
    monkeypatch.setattr(sm, "STORE_MIN_STEPS", 1)  # now a "large" session: stored once
    assert sm.must_compute(str(path), PREEMPTION_CACHE)
    with open_session(path) as s:
        computed = preemptions(s)
    assert not sm.must_compute(str(path), PREEMPTION_CACHE)
    with open_session(path) as s:
        stored = preemptions(s)
        report, _ = report_and_findings(s, quiet=True)
    for got in (computed, stored):
        assert got.as_json() == fresh.as_json() == report["preemption"]
        assert got.prefill_tokens_per_s == fresh.prefill_tokens_per_s
        assert got.notes == fresh.notes
        pd.testing.assert_frame_equal(got.table.drop(columns="waiting"), fresh.table,
                                      check_exact=True)
        assert np.array_equal(got.table["waiting"].to_numpy(), fresh_waiting, equal_nan=True)
    stored_forensics = compute_forensics(path)
    assert stored_forensics.summary == fresh_forensics.summary
    assert stored_forensics.recorded == fresh_forensics.recorded == (name == "kv_forensics")
    pd.testing.assert_frame_equal(stored_forensics.table, fresh_forensics.table, check_exact=True)


def test_a_report_to_diagnose_is_pending_until_computed_or_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``report_pending`` (pages draw their charts first and say the session is being diagnosed)
    holds for a large session whose stored report is missing or was stored by other code, until
    this process or an earlier one computed it; a small session is never pending."""
    from dashboard.data import reports
    from dashboard.data.session import FileMemo

    path = tmp_path / "big.kvscope"
    build_big_session(SOURCE, path, LARGE)
    monkeypatch.setattr(reports, "report_memo", FileMemo(reports.compute_report))
    load_session(path)  # the summaries, as the dashboard's first open stores them
    assert reports.report_pending(path)
    reports.report_memo(path)  # diagnosed and stored
    assert not reports.report_pending(path)
    monkeypatch.setattr(reports, "report_memo", FileMemo(reports.compute_report))  # a new process
    assert not reports.report_pending(path)  # read back from the file
    monkeypatch.setattr(sm, "_CODE_VERSION", "another kvscope")  # stored by other code: stale
    assert reports.report_pending(path)
    assert not reports.report_pending(SOURCE)  # small: computed when asked, in well under 1 s


def test_one_file_being_computed_does_not_hold_up_another(tmp_path: Path) -> None:
    """A FileMemo computes each file once, under a lock of that file only: the picker's line of a
    small session does not wait for a large one's diagnosis."""
    import threading

    from dashboard.data.session import FileMemo

    slow, quick = tmp_path / "slow.kvscope", tmp_path / "quick.kvscope"
    slow.write_bytes(b"a")
    quick.write_bytes(b"bb")
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def compute(p: str | Path) -> str:
        calls.append(Path(p).name)
        if Path(p) == slow:
            started.set()
            assert release.wait(60)
        return Path(p).name

    memo = FileMemo(compute)
    t = threading.Thread(target=memo, args=(slow,))
    t.start()
    assert started.wait(60)
    assert memo(quick) == "quick.kvscope" and memo.peek(slow) is None  # slow still computing
    release.set()
    t.join(60)
    assert memo(slow) == "slow.kvscope" and memo.peek(slow) == "slow.kvscope"
    assert calls == ["slow.kvscope", "quick.kvscope"]
