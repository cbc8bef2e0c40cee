"""KV events from a real vLLM server whose publisher uses a concrete ``tcp://127.0.0.1:PORT``.

vLLM binds its PUB socket only for wildcard endpoints; for a concrete one it connects and the
subscriber must listen there. ``--kv-events auto`` must store the events; a subscription where
nothing can arrive while the prefix cache works must become a kv_events gap and one stderr line.
Run under the engine lock (tests/support/engine.py), like every real-engine test.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine import ROOT, engine_env, engine_lock
from tests.support.ports import free_port
from tests.support.server import (
    Server,
    counters,
    drive,
    kv_events_config,
    running_server,
    wait_idle,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kv, replay = free_port(), free_port()
    cfg = kv_events_config(f"tcp://127.0.0.1:{kv}", f"tcp://127.0.0.1:{replay}")
    with engine_lock(), running_server(sys.executable, str(tiny_model),
                                       tmp_path_factory.mktemp("server"),
                                       extra=("--kv-events-config", cfg)) as srv:
        yield srv


def poll(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def started(session: Path) -> bool:
    if not session.exists():
        return False
    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
            return c.execute("SELECT 1 FROM events WHERE kind='attach_start'").fetchone() is not None
    except sqlite3.Error:
        return False


def silent_event(session: Path) -> bool:
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return c.execute("SELECT 1 FROM events WHERE kind='kv_events_silent'").fetchone() is not None


def attach_during_load(server: Server, session: Path, kv_arg: str, until_silent: bool = False,
                       **load: int) -> tuple[int, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "profiler.cli", "attach", server.url, "--session", str(session),
         "--interval-s", "0.25", "--kv-events", kv_arg],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env(), cwd=ROOT,
    )
    try:
        poll(lambda: proc.poll() is not None or started(session), 60, "attach to start")
        assert proc.poll() is None, proc.communicate()[1]
        codes = drive(server.url, server.model, **load)
        assert codes and all(c == 200 for c in codes)
        wait_idle(server.url)
        if until_silent:  # the watchdog notices a silence KV_SILENCE_S after the first misses
            poll(lambda: silent_event(session), 30, "the kv_events_silent event")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    return proc.returncode, err.strip().splitlines()


def q(session: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchall()


def test_concrete_endpoint_events_are_stored(server: Server, tmp_path: Path) -> None:
    session = tmp_path / "kv.kvscope"
    before = counters(server.url)
    rc, lines = attach_during_load(server, session, "auto", waves=2, per_wave=16)
    after = counters(server.url)
    assert rc == 0, lines
    assert any("(listening: the server connects)" in ln for ln in lines), lines
    assert after["preemptions"] > before["preemptions"]
    assert after["prefix_hits_tokens"] > before["prefix_hits_tokens"]
    kinds = dict(q(session, "SELECT kind, COUNT(*) FROM kv_events GROUP BY kind"))
    print(f"kv_events rows by kind: {kinds}; preemptions "  # shown with pytest -s
          f"{after['preemptions'] - before['preemptions']:.0f}, prefix-hit tokens "
          f"{after['prefix_hits_tokens'] - before['prefix_hits_tokens']:.0f}")
    assert kinds.get("stored", 0) > 0 and kinds.get("removed", 0) > 0, kinds
    assert q(session, "SELECT COUNT(*) FROM gaps WHERE source = 'kv_events'") == [(0,)]
    assert not any("no KV-event batch" in ln for ln in lines)


def test_events_that_cannot_arrive_are_a_gap_and_one_line(server: Server, tmp_path: Path) -> None:
    session = tmp_path / "silent.kvscope"
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    rc, lines = attach_during_load(server, session, nowhere, until_silent=True, waves=1, per_wave=8,
                                   prefixes=8)
    assert rc == 0, lines
    told = [ln for ln in lines if "no KV-event batch" in ln]
    assert len(told) == 1 and nowhere in told[0], lines
    gaps = q(session, "SELECT t_start_unix_s, t_end_unix_s, reason FROM gaps WHERE source = 'kv_events'")
    assert len(gaps) == 1 and gaps[0][1] > gaps[0][0] and nowhere in str(gaps[0][2])
    assert q(session, "SELECT COUNT(*) FROM kv_events") == [(0,)]
    assert q(session, "SELECT COUNT(*) FROM steps")[0][0] > 4
