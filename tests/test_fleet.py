"""Fleets (issue 15): one attach process scrapes many servers on one event loop, asks vLLM-shaped
servers for only the samples it records, and the dashboard's Fleet page ranks the servers worst
first."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from dashboard.data.fleet import compute_fleet
from profiler.attach.feeds import COARSE_PERIOD_S, Feed, FeedSchedule, core_samples
from profiler.attach.session import AttachOptions, run_attach
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT
from tests.support.fake_metrics import STEP, FakeVllm, fake_vllm
from tests.support.waiting import wait_until

PROMPT = "vllm:prompt_tokens_total"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[FakeVllm], int]]:
    """Four fake servers attached at once for 3 s: a normal one, a saturated one, one that fails
    for a while (a gap), an idle one. Yields the session, the fakes, and the scrape threads seen."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.kvscope"
    with ExitStack() as stack:
        fakes = [stack.enter_context(fake_vllm()) for _ in range(4)]
        fakes[1].gauges = {"running": 3.0, "waiting": 12.0, "usage": 0.99}
        fakes[2].set("http500", after=3, lasting=2)
        fakes[3].gauges = {"running": 0.0, "waiting": 0.0, "usage": 0.0}
        fakes[3].advance = {}  # idle: no traffic
        opts = AttachOptions(urls=[f.url for f in fakes], session=path, interval_s=0.1,
                             duration_s=3.0, timeout_s=1.0)
        threads: list[int] = []
        t = threading.Thread(target=lambda: run_attach(opts, threading.Event()))
        t.start()
        wait_until(lambda: any(th.name == "kvscope-scrape" for th in threading.enumerate()), 30,
                   "the scrape loop to start")
        threads.append(sum(th.name == "kvscope-scrape" for th in threading.enumerate()))
        t.join(60)
        for f in fakes:
            f.final = f.counters[PROMPT]  # type: ignore[attr-defined]
        yield path, fakes, threads[0]


def q(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        return c.execute(sql, params).fetchall()


def test_one_event_loop_scrapes_every_server_with_exact_counters(
        fleet: tuple[Path, list[FakeVllm], int]) -> None:
    path, fakes, scrape_threads = fleet
    assert scrape_threads == 1  # one loop thread for the four servers, not one thread each
    for f in fakes:
        (eid,), = q(path, "SELECT engine_id FROM engines WHERE label = ?", (f.url,))
        total = q(path, "SELECT COALESCE(SUM(prompt_tokens), 0) FROM steps WHERE engine_id = ?",
                  (eid,))[0][0]
        baseline = 10 * STEP[PROMPT] + f.advance.get(PROMPT, 0.0)  # at the probe
        assert total == f.final - baseline  # type: ignore[attr-defined]
    gaps = q(path, "SELECT e.label, g.reason FROM gaps g JOIN engines e USING (engine_id)")
    assert [(label, "HTTP 500" in reason) for label, reason in gaps] == [(fakes[2].url, True)]


def test_fleet_table_is_worst_first(fleet: tuple[Path, list[FakeVllm], int]) -> None:
    path, fakes, _ = fleet
    table = compute_fleet(path)
    assert list(table["server"]) == [fakes[2].url, fakes[1].url, fakes[0].url, fakes[3].url]
    first, saturated = table.iloc[0], table.iloc[1]
    assert first["missing_s"] > 0.4 and table["missing_s"].iloc[1:].eq(0).all()
    assert saturated["saturated_frac"] == 1.0 and saturated["waiting_mean"] == 12.0
    assert table.iloc[3]["kv_peak_frac"] == 0.0 and table.iloc[3]["waiting_max"] == 0


@pytest.mark.browser
def test_fleet_page_shows_the_servers_worst_first(fleet: tuple[Path, list[FakeVllm], int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, fakes, _ = fleet
    at = go(open_app(monkeypatch, path), "fleet")
    assert not at.error
    shown = at.dataframe[0].value
    assert list(shown["server"]) == [fakes[2].url, fakes[1].url, fakes[0].url, fakes[3].url]
    assert list(shown["rank"]) == [1, 2, 3, 4]
    assert len(at.get("vega_lite_chart")) == 2


@pytest.mark.browser
def test_fleet_page_on_one_server_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, ROOT / "sessions" / "healthy.kvscope"), "fleet")
    assert not at.error and "holds one server" in at.info[0].value


def test_feed_schedule_asks_for_coarse_feeds_only_when_due() -> None:
    coarse = Feed("histograms", ("vllm:e2e_request_latency_seconds_bucket",), lambda *a: None,
                  period_s=COARSE_PERIOD_S)
    core = Feed("steps", core_samples(), lambda *a: None)
    sched = FeedSchedule([core, coarse])
    due = sched.due(100.0)
    assert due == [core, coarse]
    sched.served(due, 100.0)
    assert sched.due(100.25) == [core] and sched.due(100.0 + COARSE_PERIOD_S) == [core, coarse]
    assert "vllm:e2e_request_latency_seconds_bucket" not in FeedSchedule.samples([core])
    assert "vllm:num_requests_running" in core_samples()
    assert "vllm:prompt_tokens_total" in core_samples()


def test_vllm_shaped_servers_are_asked_for_the_recorded_samples_only(tmp_path: Path) -> None:
    """Stand-ins answer like vLLM (``/metrics`` whole, ``/metrics/?name[]=`` filtered): after the
    probe every scrape is a filtered one, and a feed with a longer period gets its own samples (and
    the final scrape, so it covers the whole window)."""
    ports_file = tmp_path / "ports.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.standin_metrics", "--servers", "2",
                             "--ports-file", str(ports_file)], cwd=ROOT)
    try:
        wait_until(lambda: ports_file.exists() and ports_file.read_text().strip() != "", 30,
                   "the stand-ins to start")
        urls = [f"http://127.0.0.1:{p}" for p in json.loads(ports_file.read_text())]
        seen: list[tuple[str, float]] = []

        def consume(server: Any, text: str, t_unix_s: float) -> None:
            assert "vllm:e2e_request_latency_seconds_bucket" in text
            seen.append((server.url, t_unix_s))

        feed = Feed("e2e", ("vllm:e2e_request_latency_seconds_bucket",), consume, period_s=1.0)
        opts = AttachOptions(urls=urls, session=tmp_path / "s.kvscope", interval_s=0.1,
                             duration_s=2.5, feeds=[feed])
        t0 = time.time()
        result = run_attach(opts, threading.Event())
        assert not result.incomplete
        for url in urls:
            stats = httpx.get(url + "/stats").json()
            assert stats["full"] == 1 and stats["filtered"] >= 15, stats  # the probe alone is whole
            times = [t for u, t in seen if u == url]
            periodic = times[:-1]  # the final scrape, at the window's end, serves every feed
            assert 2 <= len(periodic) <= 4
            assert all(b - a >= 0.9 for a, b in zip(periodic, periodic[1:], strict=False))
            assert times[-1] - t0 >= opts.duration_s - 0.5
            assert times[0] - t0 < 1.0
    finally:
        proc.terminate()
        proc.wait(10)


def test_fleet_table_from_rollups_equals_the_table_from_steps(
        fleet: tuple[Path, list[FakeVllm], int], monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.data.fleet import fleet_table
    from profiler.session import summaries
    from profiler.session.reader import open_session

    path, _, _ = fleet
    with open_session(path) as s:
        assert summaries.up_to_date(s.db)  # attach's writer kept them
        rolled = fleet_table(s)
        monkeypatch.setattr(summaries, "up_to_date", lambda conn: False)
        scanned = fleet_table(s)
    pd.testing.assert_frame_equal(rolled, scanned, check_exact=False, rtol=1e-12)
