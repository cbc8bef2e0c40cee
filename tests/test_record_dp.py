"""Data parallel 2 on the CPU engine, recorded with ``kvscope record``: every DP rank is its own
engine, exactly (steps, finished requests and prompt blocks of each rank against the server's own
per-engine counters in the same run), and a DP engine core's own error is recorded from its busy
loop (``DPEngineCoreProc.run_busy_loop``) with its engine, next to the frontend's EngineDeadError.

Run under the engine lock: ``flock /tmp/kvscope-engine.lock python -m pytest tests/test_record_dp.py``.
The last test kills a worker, so it must stay last in this file. bench/gpu_dp2.py runs the same
checks on two GPUs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler.session.reader import open_session
from tests.support import dp as dpcheck
from tests.support import server as srv
from tests.support.engine import KVSCOPE
from tests.support.server import Server
from tests.support.tinymodel import build_tiny_llama

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    model = str(build_tiny_llama(tmp_path_factory.mktemp("model")))
    session = tmp_path_factory.mktemp("record") / "dp2.kvscope"
    with srv.running_server(sys.executable, model, tmp_path_factory.mktemp("server"), blocks=24,
                            extra=("--data-parallel-size", "2"),
                            wrapper=(*KVSCOPE, "record", "--session", str(session), "--")) as s:
        yield s, session


def test_each_dp_rank_is_its_own_engine_exactly(dp: tuple[Server, Path]) -> None:
    server, session = dp
    got = dpcheck.drive_and_compare(server, session)
    assert got["codes"] == [200] * 32
    assert sorted(got["server"]) == [0, 1]
    assert all(got["server"][e]["finished"] > 0 for e in (0, 1)), "the balancer must use both"
    assert got["recorded"] == got["server"]  # steps per rank = that engine's own counters
    assert sorted(got["per_rank"]) == [0, 1] and got["data_parallel_size"] == [2]
    for rank, mine in got["per_rank"].items():
        assert mine["requests"] == got["server"][rank]["finished"], rank
        assert mine["hashed_ids"] == mine["request_ids"], rank  # prompt blocks on their engine
    assert got["engine_core_ranks"] == [0, 1]  # each engine core says its DP rank
    with open_session(session) as s:
        assert set(s.table("engines")["source"]) == {"inproc"}


def test_zz_dp_engine_core_error_is_recorded_with_its_engine(dp: tuple[Server, Path]) -> None:
    """Last: kill -9 the worker of DP rank 1. Its engine core's busy loop (DPEngineCoreProc's own
    run_busy_loop) fails: that error is recorded in that process, with rank 1's engine; the
    frontend's EngineDeadError is recorded as a frontend event."""
    server, session = dp
    got = dpcheck.kill_rank_worker(server, session, rank=1)
    assert got["killed_workers"], "the CPU engine runs its worker in a child process"
    assert len(got["core_events"]) == 1, got
    core = got["core_events"][0]
    assert core["engine_id"] == got["engine_id"] and core["dp_rank"] == 1, core
    assert got["frontend_events"], got
