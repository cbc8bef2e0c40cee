"""Issue 16 on a real ``vllm serve`` (api_server, tiny CPU model) recorded with ``kvscope record``:
the status of a recording that idles, its Live page against ``kvscope report --last-s``, and an
engine core killed under it (recorded as a frontend error; the status says the engine is lost).

Run under the engine lock: ``flock /tmp/kvscope-engine.lock python -m pytest tests/test_live_record.py``.
The last test kills the engine core, so it must stay last in this file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler.analysis import live
from profiler.session.reader import open_session
from tests.support import server as srv
from tests.support.dashboard import go, open_app
from tests.support.engine import KVSCOPE, kvscope_here
from tests.support.server import Server
from tests.support.tinymodel import build_tiny_llama
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

BLOCKS = 24


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    model = str(build_tiny_llama(tmp_path_factory.mktemp("model")))
    session = tmp_path_factory.mktemp("record") / "serve.kvscope"
    with srv.running_server(sys.executable, model, tmp_path_factory.mktemp("server"), blocks=BLOCKS,
                            wrapper=(*KVSCOPE, "record", "--session", str(session), "--")) as s:
        yield s, session


def status(session: Path) -> live.LiveStatus:
    with open_session(session) as s:
        return live.session_status(s)


def metric(at, label: str) -> str:  # noqa: ANN001
    return next(m.value for m in at.metric if m.label == label)


def test_idle_recording_reads_recording_idle(recorded: tuple[Server, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server, session = recorded
    first = wait_until(lambda: status(session) if status(session).state == live.IDLE else None, 30,
                       "the started, idle server to read 'recording, idle'")
    assert first.mode == "record" and "kvscope" in first.how and "api_server" in first.how
    # one wave lasts about a second here: waves go on until a read has seen steps in flight
    with srv.waves_until_done(lambda: srv.drive(server.url, server.model, waves=1, per_wave=16,
                                                max_tokens=32), least=32) as codes:
        wait_until(lambda: status(session).state == live.RECORDING, 120, "steps to read 'recording'")
    assert len(codes) >= 32 and codes == [200] * len(codes)
    srv.wait_idle(server.url)
    idle = wait_until(lambda: status(session) if status(session).state == live.IDLE else None, 30,
                      "the drained engine to read idle again")
    assert "nothing running or waiting" in idle.detail
    # idle for longer than the old page's 30 s "stopped" rule would take is still idle: the
    # heartbeat says the recorder runs (its age, not the data's, decides)
    with open_session(session) as s:
        later = live.session_status(s, now_unix_s=float(s.meta()["heartbeat"]["t_unix_s"]) + 1.0)
    assert later.heartbeat_age_s is not None and later.heartbeat_age_s <= 1.0 + 1e-6
    at = go(open_app(monkeypatch, session), "live")
    rep = json.loads(kvscope_here("report", str(session), "--json", "--last-s", "300").stdout)
    assert metric(at, "Status") == live.IDLE
    assert metric(at, "Finished in window") == f"{rep['requests_finished']:,}" == f"{len(codes):,}"
    assert metric(at, "Steps in window") == f"{rep['steps']:,}"
    text = " ".join(x.value for x in [*at.markdown, *at.caption])
    assert "recorded in-process" in text and "kvscope attach" not in text


def test_zz_engine_core_killed_is_an_engine_lost(recorded: tuple[Server, Path]) -> None:
    """Last: kill -9 the engine core; the frontend's EngineDeadError is a frontend event, and the
    status says the engine is lost (while the program runs, and after it exits)."""
    server, session = recorded
    with open_session(session) as s:
        core = s.table("processes").query("role == 'engine_core'")
    assert len(core) == 1 and int(core["rank"].iloc[0]) == 0  # engine cores carry their DP rank
    os.kill(int(core["pid"].iloc[0]), signal.SIGKILL)

    def frontend_error() -> bool:
        with open_session(session) as s:
            ev = s.table("events").query("kind == 'error'")
        return any("EngineDeadError" in (m or "") and "frontend" in (d or "")
                   for m, d in zip(ev["message"], ev["details_json"], strict=True))

    # the output handler sees the engine core gone on its next output: send one request
    try:
        srv.drive(server.url, server.model, waves=1, per_wave=1, max_tokens=4)
    except Exception:  # noqa: BLE001 (the request fails: the engine is dead)
        pass
    wait_until(frontend_error, 60, "a frontend EngineDeadError event")
    lost = wait_until(lambda: status(session) if status(session).state == live.LOST else None, 30,
                      "the status to say the engine is lost")
    assert lost.detail.startswith("engine lost: EngineDeadError")
