"""Data-parallel recording checks shared by tests/test_record_dp.py (CPU engine) and
bench/gpu_dp2.py (the lent GPUs): drive a recorded DP server, compare each rank's recorded
numbers with the server's own per-engine counters of the same run, kill one rank's worker."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from profiler.session.reader import open_session
from tests.support import server as srv
from tests.support.server import Server


def per_engine_sums(session: Path) -> dict[int, dict[str, float]]:
    """Server-counter columns summed per engine_index over the recorded steps."""
    cols = ", ".join(f"COALESCE(SUM(s.{c}), 0)" for c in srv.COUNTERS)
    with open_session(session) as s:
        rows = s.rows(f"SELECT e.engine_index, {cols} FROM steps s JOIN engines e "
                      "ON s.engine_id = e.engine_id GROUP BY e.engine_index")
    return {int(r[0]): dict(zip(srv.COUNTERS, r[1:], strict=True)) for r in rows}


def drive_and_compare(server: Server, session: Path, waves: int = 2, per_wave: int = 16,
                      timeout_s: float = 30.0) -> dict[str, Any]:
    """Drive the server, then wait until the session's per-engine sums equal the server's
    per-engine counter deltas (or ``timeout_s``). Returns what each side counted, per engine,
    and per engine the requests and the request ids whose prompt blocks were stored."""
    before = srv.engine_counters(server.url)
    codes = srv.drive(server.url, server.model, waves=waves, per_wave=per_wave, prefixes=3,
                      max_tokens=32)
    srv.wait_idle(server.url)
    after = srv.engine_counters(server.url)
    server_counts = {int(e): {c: after[e][c] - before.get(e, {}).get(c, 0.0) for c in srv.COUNTERS}
                     for e in after}
    deadline = time.monotonic() + timeout_s
    while True:
        recorded = per_engine_sums(session)
        if recorded == server_counts or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    with open_session(session) as s:
        engines = s.table("engines")
        requests = s.table("requests")
        blocks = s.table("prompt_blocks")
        procs = s.table("processes")
    per_rank: dict[int, dict[str, Any]] = {}
    for rank, eid in zip(engines["engine_index"], engines["engine_id"], strict=True):
        mine = requests[requests["engine_id"] == eid]
        # vLLM's internal request id is the API's id plus a random suffix
        hashed = {r.rsplit("-", 1)[0] for r in blocks.loc[blocks["engine_id"] == eid, "request_id"]}
        per_rank[int(rank)] = {"engine_id": int(eid), "requests": len(mine),
                               "request_ids": sorted(mine["request_id"]), "hashed_ids": sorted(hashed)}
    cores = procs[procs["role"] == "engine_core"]
    return {"codes": codes, "server": server_counts, "recorded": recorded, "per_rank": per_rank,
            "engine_core_ranks": sorted(int(r) for r in cores["rank"].dropna()),
            "engine_core_pids": {int(r): int(p) for r, p in zip(cores["rank"], cores["pid"],
                                                                 strict=True) if r == r},
            "data_parallel_size": sorted(set(int(x) for x in engines["data_parallel_size"].dropna()))}


def kill_rank_worker(server: Server, session: Path, rank: int, timeout_s: float = 90.0) -> dict[str, Any]:
    """kill -9 the worker processes of DP rank ``rank`` and wait for the error events: that
    rank's engine core failing in its busy loop, and the frontend's EngineDeadError."""
    with open_session(session) as s:
        cores = s.table("processes").query("role == 'engine_core'")
        engines = s.table("engines")
    core = int(cores.loc[cores["rank"] == rank, "pid"].iloc[0])
    eid = int(engines.loc[engines["engine_index"] == rank, "engine_id"].iloc[0])
    killed = [w.pid for w in psutil.Process(core).children(recursive=True)]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    try:
        srv.drive(server.url, server.model, waves=1, per_wave=2, max_tokens=4)
    except Exception:  # noqa: BLE001 (the engine is dead: requests fail)
        pass
    deadline = time.monotonic() + timeout_s
    core_events: list[dict[str, Any]] = []
    frontend_events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with open_session(session) as s:
            ev = s.table("events").query("kind == 'error'")
        rows = [{"pid": None if p != p else int(p), "engine_id": None if e != e else int(e),
                 "message": m or "", **(json.loads(d) if d else {})}
                for p, e, m, d in zip(ev["pid"], ev["engine_id"], ev["message"], ev["details_json"],
                                      strict=True)]
        core_events = [r for r in rows if r["pid"] == core and r.get("where") == "engine core: busy loop"]
        frontend_events = [r for r in rows if str(r.get("where", "")).startswith("frontend")
                           and "EngineDeadError" in r["message"]]
        if core_events and frontend_events:
            break
        time.sleep(0.5)
    for r in core_events + frontend_events:
        r.pop("traceback", None)
    return {"rank": rank, "engine_core_pid": core, "engine_id": eid, "killed_workers": killed,
            "core_events": core_events, "frontend_events": frontend_events}
