"""``kvscope attach`` against a fake vLLM whose /metrics misbehaves (tests/support/fake_metrics.py).

Every case asserts: the attach ends in bounded time, with the exit status that says whether the
session covers the window, only one-line ``kvscope:`` messages, every good scrape kept, a gap with
a reason for every interval without data, and NULL plus one event for every impossible value.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from profiler.attach import session as attach_session
from profiler.attach.session import AttachOptions, run_attach
from tests.support.engine import kvscope, kvscope_here
from tests.support.fake_metrics import STEP, FakeVllm, fake_vllm

DURATION_S = 2.0
TIMEOUT_S = 1.0
INTERVAL_S = 0.1
HANG_S = 20.0
"""Slack over the window before a case counts as a hang: a process start and interpreter import on
a loaded 2-core machine take seconds; a hang would run to the 600 s timeout."""
PROMPT = "vllm:prompt_tokens_total"
FIRST_PROMPT = 11 * STEP[PROMPT]
"""The prompt-token counter at the probe (the fake starts at 10 steps and advances per scrape)."""


@dataclass
class Attached:
    rc: int
    lines: list[str]
    wall_s: float
    path: Path

    def q(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as c:
            return c.execute(sql).fetchall()

    @property
    def meta(self) -> dict[str, object]:
        return {k: json.loads(str(v)) for k, v in self.q("SELECT key, value FROM meta")}

    @property
    def gaps(self) -> list[tuple[object, ...]]:
        return self.q("SELECT source, t_start_unix_s, t_end_unix_s, reason FROM gaps")

    def events(self, kind: str) -> list[str]:
        return [str(r[0]) for r in self.q(f"SELECT message FROM events WHERE kind = '{kind}'")]


def attach(fake: FakeVllm, tmp_path: Path, *extra: str, in_process: bool = True,
           duration_s: float = DURATION_S) -> Attached:
    """``kvscope attach`` on the fake: in this process (quick; tests.support.engine.kvscope_here
    captures only the call's own threads), or as a real process where the case is about not
    hanging."""
    path = tmp_path / "s.kvscope"
    t0 = time.monotonic()
    run = kvscope_here if in_process else kvscope
    r = run("attach", fake.url, "--session", str(path), "--duration-s", str(duration_s),
            "--interval-s", str(INTERVAL_S), "--timeout-s", str(TIMEOUT_S), *extra)
    wall = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert all(ln.startswith("kvscope: ") for ln in lines), r.stderr  # no tracebacks, one-liners
    return Attached(r.returncode, lines, wall, path)


def assert_complete(a: Attached) -> None:
    assert a.rc == 0, a.lines
    meta = a.meta
    assert "ended_unix_s" in meta and "incomplete_reason" not in meta
    assert meta["ended_unix_s"] - meta["started_unix_s"] >= DURATION_S - 0.5


def prompt_sum(a: Attached) -> int:
    return int(a.q("SELECT COALESCE(SUM(prompt_tokens), 0) FROM steps")[0][0])


def test_healthy_server_is_complete_with_exact_counters(tmp_path: Path) -> None:
    with fake_vllm() as fake:
        a = attach(fake, tmp_path)
        final = fake.counters[PROMPT]
    assert_complete(a)
    assert a.wall_s < DURATION_S + HANG_S
    assert a.gaps == [] and a.events("bad_value") == []
    n = a.q("SELECT COUNT(*) FROM steps")[0][0]
    assert n >= 10
    assert prompt_sum(a) == final - FIRST_PROMPT


HANGS = {"drip", "stall"}
"""Behaviours whose cases run attach as a real process with a timeout: they prove it cannot hang."""

# a server that goes bad mid-session and stays bad: data until then, then one gap to the end
FOREVER = {
    "garbage": "not Prometheus text", "html": "not Prometheus text",
    "huge": "answer larger than 16 MiB", "drip": f"timed out after {TIMEOUT_S:g} s",
    "stall": f"timed out after {TIMEOUT_S:g} s", "http500": "returned HTTP 500",
    "reset": "Connection reset by peer",
}


@pytest.mark.parametrize("behaviour", sorted(FOREVER))
def test_server_failing_to_the_end_is_incomplete_with_a_gap(tmp_path: Path, behaviour: str) -> None:
    with fake_vllm() as fake:
        fake.set(behaviour, after=5)
        a = attach(fake, tmp_path, in_process=behaviour not in HANGS)
    why = FOREVER[behaviour]
    assert a.rc == 1, a.lines
    assert a.wall_s < DURATION_S + 2 * TIMEOUT_S + HANG_S, a.wall_s  # drip/stall bounded by the deadline
    assert a.q("SELECT COUNT(*) FROM steps")[0][0] == 5  # the probe + 4 good scrapes, all kept
    (source, t0, t1, reason), = a.gaps
    assert source == "metrics" and why in str(reason)
    meta = a.meta
    assert "ended_unix_s" not in meta and why in str(meta["incomplete_reason"])
    assert meta["started_unix_s"] + DURATION_S - 1.0 <= t1  # the gap runs to the end of the window
    assert sum(why in ln for ln in a.lines) == 2  # "retrying", then the summary's "incomplete"
    assert len(a.events("scrape_error")) == 1


@pytest.mark.parametrize("behaviour", ["http500", "reset", "stall", "garbage"])
def test_server_that_recovers_leaves_a_gap_and_a_complete_session(tmp_path: Path, behaviour: str) -> None:
    with fake_vllm() as fake:
        fake.set(behaviour, after=3, lasting=2)
        a = attach(fake, tmp_path, in_process=behaviour not in HANGS,
                   duration_s=DURATION_S + 2 * TIMEOUT_S)  # room for two timeouts
        final = fake.counters[PROMPT]
    assert_complete(a)
    (source, t0, t1, reason), = a.gaps
    assert source == "metrics" and FOREVER[behaviour] in str(reason) and t1 > t0
    assert any("reachable again" in ln for ln in a.lines)
    # counters are cumulative: nothing is lost across the gap
    assert prompt_sum(a) == final - FIRST_PROMPT


@pytest.mark.parametrize(("behaviour", "what"), [
    ("huge", "answer larger than 16 MiB"), ("drip", "timed out after 1 s"),
    ("stall", "timed out after 1 s"), ("http500", "returned HTTP 500"), ("reset", "reset by peer"),
])
def test_bad_server_at_start_is_one_line_and_no_file(tmp_path: Path, behaviour: str, what: str) -> None:
    with fake_vllm(behaviour) as fake:
        a = attach(fake, tmp_path, in_process=behaviour not in HANGS)
    assert a.rc == 2 and len(a.lines) == 1 and what in a.lines[0], a.lines
    assert a.wall_s < TIMEOUT_S + HANG_S, a.wall_s
    assert not a.path.exists()


@pytest.mark.parametrize(("behaviour", "column", "why"), [
    ("nan_gauge", "kv_usage_frac", "not a finite number"),
    ("inf_gauge", "running", "not a finite number"),
    ("neg_gauge", "kv_usage_frac", "negative"),
])
def test_impossible_gauges_are_null_with_one_event(tmp_path: Path, behaviour: str, column: str,
                                                   why: str) -> None:
    with fake_vllm() as fake:
        fake.set(behaviour, after=4, lasting=5)
        a = attach(fake, tmp_path)
    assert_complete(a)
    assert a.gaps == []
    values = [r[0] for r in a.q(f"SELECT {column} FROM steps ORDER BY t_unix_s")]
    # 4 good scrapes, the 5 bad ones stored as NULL, then at least one good one again (a loaded
    # machine fits fewer than the nominal 20 scrapes into the window)
    assert values.count(None) == 5 and len(values) >= 10 and values[-1] is not None, values
    assert all(v is None or 0 <= v for v in values)
    ev = a.events("bad_value")
    assert len(ev) == 1 and why in ev[0] and "stored as NULL" in ev[0]
    assert sum("stored as NULL" in ln for ln in a.lines) == 1


@pytest.mark.parametrize(("behaviour", "why"), [
    ("inf_counter", "not a finite number"), ("huge_counter", "beyond SQLite's 64-bit range"),
])
def test_impossible_counters_are_null_and_the_total_still_adds_up(tmp_path: Path, behaviour: str,
                                                                  why: str) -> None:
    with fake_vllm() as fake:
        fake.set(behaviour, after=4, lasting=3)
        a = attach(fake, tmp_path)
        final = fake.counters[PROMPT]
    assert_complete(a)
    values = [r[0] for r in a.q("SELECT prompt_tokens FROM steps ORDER BY t_unix_s")]
    assert values[0] is None  # the baseline row
    assert values[1:].count(None) == 3
    assert prompt_sum(a) == final - FIRST_PROMPT  # the next good scrape covers the NULL intervals
    ev = a.events("bad_value")
    assert len(ev) == 1 and why in ev[0]
    assert a.q("SELECT COUNT(*) FROM events WHERE kind = 'error'") == [(0,)]


def test_counter_backwards_without_restart_nulls_only_that_interval(tmp_path: Path) -> None:
    with fake_vllm() as fake:
        fake.set("backwards", after=4)
        a = attach(fake, tmp_path)
        final = fake.counters
    assert_complete(a)
    gen = [r[0] for r in a.q("SELECT generation_tokens FROM steps ORDER BY t_unix_s")][1:]
    assert gen.count(None) == 1 and all(g is None or g == STEP["vllm:generation_tokens_total"] for g in gen)
    assert prompt_sum(a) == final[PROMPT] - FIRST_PROMPT  # the other counters are untouched
    ev = a.events("bad_value")
    assert len(ev) == 1 and "went down while the server did not restart" in ev[0]
    assert a.events("server_restart") == []


def test_restart_counts_from_the_restart(tmp_path: Path) -> None:
    with fake_vllm() as fake:
        fake.set("restart", after=4)
        a = attach(fake, tmp_path)
        final = fake.counters[PROMPT]
        scrapes = fake.scrapes
    assert_complete(a)
    assert len(a.events("server_restart")) == 1
    # before the restart: 3 intervals of one step; from it: the counter's whole value
    assert prompt_sum(a) == 3 * STEP[PROMPT] + final
    assert final == (scrapes - 4) * STEP[PROMPT]


def test_scrape_thread_error_is_a_gap_and_incomplete_never_silent(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while recording a scrape: a gap, one error event, and the session is not complete."""
    real = attach_session.ServerAttachment.record
    calls = {"n": 0}

    def record(self: attach_session.ServerAttachment, scrape: object) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            raise OverflowError("cannot convert float infinity to integer")
        real(self, scrape)  # type: ignore[arg-type]

    monkeypatch.setattr(attach_session.ServerAttachment, "record", record)
    with fake_vllm() as fake:
        opts = AttachOptions(urls=[fake.url], session=tmp_path / "s.kvscope", interval_s=0.1,
                             duration_s=DURATION_S, give_up_s=1.0, timeout_s=TIMEOUT_S)
        t0 = time.monotonic()
        result = run_attach(opts, threading.Event())
        wall = time.monotonic() - t0
    assert wall < DURATION_S + HANG_S
    assert result.incomplete and "internal error (OverflowError" in result.incomplete[0]
    a = Attached(1, [], wall, opts.session)
    (source, _, _, reason), = a.gaps
    assert source == "metrics" and "OverflowError" in str(reason)
    assert len(a.events("error")) == 1 and "ended_unix_s" not in a.meta


def test_silent_kv_events_while_the_prefix_cache_works_is_a_gap(tmp_path: Path) -> None:
    """KV events subscribed where nobody publishes while the server computes uncached blocks:
    one line, a kv_events gap with its reason; the metrics themselves are complete."""
    from tests.support.ports import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with fake_vllm() as fake:
        path = tmp_path / "s.kvscope"
        r = kvscope("attach", fake.url, "--session", str(path), "--duration-s", "6",
                    "--interval-s", "0.1", "--kv-events", endpoint, timeout_s=120)
    a = Attached(r.returncode, r.stderr.strip().splitlines(), 0.0, path)
    assert_complete(a)
    told = [ln for ln in a.lines if "no KV-event batch" in ln]
    assert len(told) == 1 and endpoint in told[0] and "kv_events gap" in told[0], a.lines
    (source, t0, t1, reason), = a.gaps
    assert source == "kv_events" and endpoint in str(reason) and "uncached tokens" in str(reason)
    meta = a.meta
    assert t1 - t0 >= 6 - attach_session.KV_SILENCE_S - 1.5
    assert t0 - meta["started_unix_s"] < 1.0  # from the first misses, not from when it was noticed
    assert len(a.events("kv_events_silent")) == 1
