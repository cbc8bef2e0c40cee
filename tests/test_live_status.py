"""The Live page's status and forecasts on sessions written here with the session writer (no
engine; real recorder/attach processes are in tests/test_live_attach.py and test_live_record.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from profiler.analysis import live
from profiler.analysis.forecast import HORIZON_S, forecasts
from profiler.session.heartbeat import HEARTBEAT_KEY, Heartbeat
from profiler.session.reader import open_session
from profiler.session.writer import SessionWriter

T0 = 1_700_000_000.0


def make(path: Path, *, heartbeat: dict[str, Any] | None = None, steps: list[tuple] = (),
         mode_meta: dict[str, Any] | None = None, events: list[tuple] = (),
         engine: dict[str, Any] | None = None) -> Path:
    w = SessionWriter(path)
    w.set_meta(started_unix_s=T0, host=socket.gethostname(),
               **(mode_meta or {"command": ["python", "-m", "vllm.entrypoints.openai.api_server"]}))
    if heartbeat is not None:
        w.set_meta(**{HEARTBEAT_KEY: heartbeat})
    cols = {"engine_id": 1, "source": "inproc", "num_gpu_blocks": 101, "block_size": 16,
            **(engine or {})}
    w.execute_now(f"INSERT INTO engines ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                  tuple(cols.values()))
    for t, running, waiting in steps:
        w.append("steps", (1, t, running, waiting, 0.5, 0, 0, 0, 0, 0, 10, 10, 0, 0))
    for t, kind, message in events:
        w.append("events", (t, 1, None, kind, message, None))
    w.close()
    return path


def hb(t: float, mode: str = "record", pid: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"t_unix_s": t, "pid": pid or 1, "host": "elsewhere", "mode": mode, "interval_s": 1.0,
            **extra}


def status(path: Path, now: float) -> live.LiveStatus:
    with open_session(path) as s:
        return live.session_status(s, now)


def test_recording_idle_and_stopped_from_the_heartbeat(tmp_path: Path) -> None:
    busy = make(tmp_path / "busy.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 9.5, 3, 1)])
    assert status(busy, T0 + 10.5).state == live.RECORDING
    # alive, but vLLM writes no step while idle: idle after IDLE_AFTER_S, never "stopped"
    assert status(busy, T0 + 9.5 + live.IDLE_AFTER_S + 0.1).state == live.IDLE
    quiet = make(tmp_path / "quiet.kvscope", heartbeat=hb(T0 + 40), steps=[(T0 + 9.5, 3, 1)])
    s = status(quiet, T0 + 40.5)
    assert s.state == live.IDLE and "last step" in s.detail
    drained = make(tmp_path / "drained.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 9.9, 0, 0)])
    assert status(drained, T0 + 10.2).state == live.IDLE
    gone = status(quiet, T0 + 40 + 5.5)  # 5 heartbeats missed
    assert gone.state == live.STOPPED and "pid 1" in gone.detail and "gone" in gone.detail
    assert gone.mode == "record" and "recorded in-process" in gone.how


def test_a_dead_pid_on_this_host_is_stopped_at_once(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    path = make(tmp_path / "dead.kvscope", steps=[(T0 + 1, 1, 0)],
                heartbeat={**hb(time.time(), pid=child.pid), "host": socket.gethostname()})
    s = status(path, time.time())
    assert s.state == live.STOPPED and str(child.pid) in s.detail


def test_attach_server_failing_or_lost(tmp_path: Path) -> None:
    attach = {"attach_urls": ["http://10.0.0.1:8000"], "command": ["kvscope", "attach"]}
    failing = hb(T0 + 20, "attach", servers=[{"url": "http://10.0.0.1:8000", "state": "failing",
                                              "last_ok_unix_s": T0 + 12, "reason": "connection refused",
                                              "interval_s": 0.25}])
    path = make(tmp_path / "failing.kvscope", heartbeat=failing, steps=[(T0 + 12, 0, 0)],
                mode_meta=attach)
    s = status(path, T0 + 20.5)
    assert s.state == live.LOST and "connection refused" in s.detail and "8 s" in s.detail
    assert "kvscope attach" in s.how and "every 0.25 s" in s.how and "kvscope record" not in s.how
    ok = hb(T0 + 20, "attach", servers=[{"url": "http://10.0.0.1:8000", "state": "ok"}])
    idle = make(tmp_path / "idle.kvscope", heartbeat=ok, steps=[(T0 + 19.9, 0, 0)], mode_meta=attach)
    assert status(idle, T0 + 20.5).state == live.IDLE
    busy = make(tmp_path / "busy.kvscope", heartbeat=ok, steps=[(T0 + 19.9, 2, 0)], mode_meta=attach)
    assert status(busy, T0 + 20.5).state == live.RECORDING
    # attach gave up and ended: its reason stays
    ended = make(tmp_path / "ended.kvscope", heartbeat=ok, steps=[(T0 + 12, 0, 0)],
                 mode_meta={**attach, "incomplete_reason": "lost http://10.0.0.1:8000 (refused)"})
    s = status(ended, T0 + 100)
    assert s.state == live.LOST and "lost http" in s.detail


def test_finished_and_engine_lost(tmp_path: Path) -> None:
    done = make(tmp_path / "done.kvscope", heartbeat=hb(T0 + 5), steps=[(T0 + 4, 1, 0)],
                mode_meta={"command": ["x"], "ended_unix_s": T0 + 6, "exit_code": 0})
    assert status(done, T0 + 100).state == live.FINISHED
    dead = make(tmp_path / "dead.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 4, 1, 0)],
                events=[(T0 + 5, "error", "EngineDeadError: EngineCore encountered an issue.")])
    s = status(dead, T0 + 10.5)
    assert s.state == live.LOST and s.detail.startswith("engine lost: EngineDeadError")
    crashed = make(tmp_path / "crashed.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 4, 1, 0)],
                   mode_meta={"command": ["x"], "ended_unix_s": T0 + 11, "exit_code": 1},
                   events=[(T0 + 5, "error", "EngineDeadError: EngineCore encountered an issue.")])
    s = status(crashed, T0 + 12)
    assert s.state == live.LOST and "exit code 1" in s.detail
    # stopped by a signal kvscope record passed on: vLLM's frontend logging an EngineDeadError
    # while it shuts down its engines is the stop, not an engine lost (one before it still is)
    stopped = make(tmp_path / "stopped.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 4, 1, 0)],
                   mode_meta={"command": ["x"], "ended_unix_s": T0 + 11, "exit_code": 0},
                   events=[(T0 + 5, "stop_signal", "SIGTERM passed on to the recorded program"),
                           (T0 + 5.1, "error", "EngineDeadError: EngineCore encountered an issue.")])
    assert status(stopped, T0 + 12).state == live.FINISHED
    lost_first = make(tmp_path / "lost_first.kvscope", heartbeat=hb(T0 + 10), steps=[(T0 + 4, 1, 0)],
                      mode_meta={"command": ["x"], "ended_unix_s": T0 + 11, "exit_code": 0},
                      events=[(T0 + 5, "error", "EngineDeadError: EngineCore encountered an issue."),
                              (T0 + 6, "stop_signal", "SIGTERM passed on to the recorded program")])
    assert status(lost_first, T0 + 12).state == live.LOST


def test_sessions_without_heartbeat_judge_by_their_data(tmp_path: Path) -> None:
    old = make(tmp_path / "old.kvscope", steps=[(T0 + 4, 1, 0)])
    assert status(old, T0 + 10).state == live.RECORDING
    s = status(old, T0 + 100)
    assert s.state == live.STOPPED and "no heartbeat" in s.detail


def test_heartbeat_thread_writes_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "beat.kvscope"
    w = SessionWriter(path)
    beat = Heartbeat(w, "attach", lambda: {"servers": []}, interval_s=0.05).start()
    first = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open_session(path) as s:
            got = s.meta().get(HEARTBEAT_KEY)
        if got and first is None:
            first = got["t_unix_s"]
        elif got and got["t_unix_s"] > first:
            break
        time.sleep(0.02)
    beat.stop()
    w.close()
    with open_session(path) as s:
        last = s.meta()[HEARTBEAT_KEY]
    assert last["t_unix_s"] > first and last["mode"] == "attach" and last["servers"] == []


def ramp(path: Path, t: np.ndarray, kv: np.ndarray, **engine: Any) -> Path:
    w = SessionWriter(path)
    w.set_meta(started_unix_s=T0, command=["x"])
    cols = {"engine_id": 1, "source": "inproc", "num_gpu_blocks": 101, "block_size": 16,
            "max_num_seqs": 64, **engine}
    w.execute_now(f"INSERT INTO engines ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                  tuple(cols.values()))
    for ti, k in zip(t, kv, strict=True):
        w.append("steps", (1, float(ti), 4, 0, float(k), 0, 0, 0, 0, 0, 10, 10, 0, 0))
    w.close()
    return path


def test_kv_saturation_forecast_from_a_rising_trend(tmp_path: Path) -> None:
    t = T0 + np.arange(0, 40, 0.25)
    kv = 0.2 + 0.01 * (t - T0) + np.random.default_rng(0).normal(0, 0.005, t.size)
    with open_session(ramp(tmp_path / "ramp.kvscope", t, kv)) as s:
        (f,) = forecasts(s)
    assert f.code == "FORECAST_KV_SATURATION" and f.engine_id == 1
    # 0.6 now, +1 %/s: 95 % in ~35 s
    assert f.metrics["eta_s"] == pytest.approx(35, abs=3)
    assert f.settings == {"num_gpu_blocks_override": f.metrics["needed_blocks"]}
    assert f.metrics["needed_blocks"] > 101
    assert "reaches 95%" in f.message
    json.dumps(f.as_dict(), allow_nan=False)


def test_no_forecast_without_a_clear_trend(tmp_path: Path) -> None:
    t = T0 + np.arange(0, 40, 0.25)
    flat = 0.5 + np.random.default_rng(1).normal(0, 0.05, t.size)
    with open_session(ramp(tmp_path / "flat.kvscope", t, flat)) as s:
        assert forecasts(s) == []
    slow = 0.2 + 1e-5 * (t - T0)  # rising, but the ceiling is beyond the horizon
    assert (0.95 - 0.2) / 1e-5 > HORIZON_S
    with open_session(ramp(tmp_path / "slow.kvscope", t, slow)) as s:
        assert forecasts(s) == []


def test_oom_forecast_from_device_growth(tmp_path: Path) -> None:
    path = tmp_path / "grow.kvscope"
    w = SessionWriter(path)
    w.set_meta(started_unix_s=T0, command=["x"])
    w.execute_now("INSERT INTO engines (engine_id, source, gpu_memory_utilization) VALUES (1, 'inproc', 0.9)")
    w.append("processes", (100, "worker", 0, 1, "h", T0))
    total = 80 * 2**30
    for i in range(200):
        t = T0 + 0.1 * i
        used = 60 * 2**30 + i * 50 * 2**20  # +500 MiB/s: 19.2 GiB left -> ~39 s
        w.append("gpu_samples", (t, 0, used, total))
        w.append("gpu_process_samples", (t, 0, 100, 50 * 2**30))
        w.append("gpu_process_samples", (t, 0, 777, used - 50 * 2**30))
    w.close()
    with open_session(path) as s:
        (f,) = forecasts(s)
    assert f.code == "FORECAST_OOM"
    left = 0.99 * total - (60 * 2**30 + 199 * 50 * 2**20)
    assert f.metrics["eta_s"] == pytest.approx(left / (500 * 2**20), rel=0.02)
    assert f.metrics["cause"] == "other processes" and "pid 777" in f.recommendation
    assert 0 < f.settings["gpu_memory_utilization"] < 0.9

