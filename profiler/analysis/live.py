"""A session while it is being made: its status, and the report and findings of its last minutes.

``session_status`` tells the Live page what is happening: ``recording`` (data is coming),
``recording, idle`` (the recorder or attach process runs, the engine has nothing to do),
``stopped`` (that process is gone without finishing the session), ``server lost`` (attach cannot
reach a server, or the recorded engine died), ``finished``. It reads the heartbeat that the
owning process writes every second (``profiler.session.heartbeat``), the processes table (a pid
on this host that no longer runs) and the data itself.

``live_window`` is the report, diagnosis and forecasts of the session's last ``window_s`` seconds:
the same ``build_report`` and ``diagnose`` as ``kvscope report --last-s N`` (the window's rows
only, ``open_session(window=...)``), so the Live page and the report agree number for number.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.analysis.diagnosis import diagnose
from profiler.analysis.forecast import forecasts
from profiler.analysis.report import build_report
from profiler.session.heartbeat import HEARTBEAT_KEY, stale_after_s
from profiler.session.reader import Session, open_session
from profiler.units import printable

RECORDING, IDLE, STOPPED, LOST, FINISHED = (
    "recording", "recording, idle", "stopped", "server lost", "finished")
"""The statuses ``session_status`` gives."""

IDLE_AFTER_S = 5.0
"""A recorded engine that wrote no step for this long (its heartbeat fresh) is idle: vLLM records
no step while nothing runs."""
NO_HEARTBEAT_STOPPED_S = 30.0
"""Sessions without a heartbeat (kvscope before it): no data for this long reads as stopped."""
_ENGINE_DEAD = ("EngineDeadError", "EngineCore encountered an issue", "engine core exited")


@dataclass(frozen=True)
class LiveStatus:
    """What is happening to a session now."""

    state: str
    """One of RECORDING, IDLE, STOPPED, LOST, FINISHED."""
    detail: str
    """One line: why this state."""
    mode: str | None
    """``record`` (in-process), ``attach`` (scraped from /metrics), None when unknown."""
    how: str
    """One line: how the session is being made (by what process, from what)."""
    last_data_age_s: float | None
    heartbeat_age_s: float | None


def _ago(age_s: float) -> str:
    if age_s < 60:
        return f"{age_s:.0f} s ago"
    if age_s < 3600:
        return f"{age_s / 60:.0f} min ago"
    return f"{age_s / 3600:.1f} h ago"


def _pid_gone(pid: Any, host: Any) -> bool:
    """True when ``pid`` ran on this host and no longer does (unknown elsewhere: False)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def _how(meta: dict[str, Any], mode: str | None, hb: dict[str, Any], owner_pid: Any,
         by_cli: bool = False) -> str:
    host = hb.get("host") or meta.get("host")
    where = f" (pid {owner_pid} on {printable(host)})" if owner_pid else ""
    if mode == "attach":
        urls = meta.get("attach_urls") or [s.get("url") for s in hb.get("servers") or []]
        interval = next((s.get("interval_s") for s in hb.get("servers") or [] if s.get("interval_s")),
                        None)
        every = f" every {interval:g} s" if isinstance(interval, int | float) else ""
        return (f"attached by kvscope attach{where} to {', '.join(printable(u) for u in urls)}: "
                f"/metrics scraped{every}, latencies from the server's histograms")
    if mode == "record":
        cmd = meta.get("command")
        text = " ".join(cmd) if isinstance(cmd, list) else "a vLLM program"
        if len(text) > 120:
            text = text[:117] + "..."
        by = " by kvscope record" if by_cli else ""
        return (f"recorded in-process{by}{where} from {printable(text)}: every engine step and "
                "finished request")
    return "made by a kvscope without heartbeats: how it is being made is not recorded"


def session_status(session: Session, now_unix_s: float | None = None) -> LiveStatus:
    """The session's status now (see the module docstring)."""
    now = time.time() if now_unix_s is None else now_unix_s
    meta = session.meta()
    hb = meta.get(HEARTBEAT_KEY)
    hb = hb if isinstance(hb, dict) else {}
    mode = hb.get("mode") if hb.get("mode") in ("record", "attach") else (
        "attach" if meta.get("attach_urls") else "record" if meta.get("command") else None)
    owner_pid = hb.get("pid") if isinstance(hb.get("pid"), int) else _owner_pid(session, mode)
    by_cli = mode == "record" and session.scalar(
        "SELECT COUNT(*) FROM processes WHERE role = 'recorder'") not in (None, 0)
    how = _how(meta, mode, hb, owner_pid, by_cli)
    _, end = session.bounds()
    data_age = max(now - float(end), 0.0) if end is not None else None
    hb_t = hb.get("t_unix_s")
    hb_age = max(now - float(hb_t), 0.0) if isinstance(hb_t, int | float) else None
    reason = meta.get("incomplete_reason")
    who = "kvscope attach" if mode == "attach" else "recorder"

    def status(state: str, detail: str) -> LiveStatus:
        return LiveStatus(state, detail, mode, how, data_age, hb_age)

    if meta.get("ended_unix_s") is not None and not reason:
        code = meta.get("exit_code")
        ended = float(meta["ended_unix_s"])
        tail = f", exit code {code}" if isinstance(code, int) and code != 0 else ""
        dead = _engine_dead(session)
        if dead:  # the recorded program ended because its engine died
            return status(LOST, f"{dead}; the program exited {_ago(max(now - ended, 0.0))}{tail}")
        return status(FINISHED, f"finished {_ago(max(now - ended, 0.0))}{tail}")
    if hb_age is None:  # no heartbeat: a session of an older kvscope, judged by its data
        if reason:
            return status(LOST if "lost" in str(reason) else STOPPED, printable(reason))
        if data_age is not None and data_age < NO_HEARTBEAT_STOPPED_S:
            return status(RECORDING, f"last data {_ago(data_age)} (no heartbeat in this session)")
        return status(STOPPED, "no data for a while and no heartbeat in this session "
                               f"(last data {_ago(data_age) if data_age is not None else 'never'})")
    gone = hb_age > stale_after_s(hb) or _pid_gone(hb.get("pid"), hb.get("host"))
    if gone:
        if reason:
            return status(LOST if "lost" in str(reason) else STOPPED, printable(reason))
        return status(STOPPED, f"the {who} process (pid {hb.get('pid')}) is gone; last heartbeat "
                               f"{_ago(hb_age)}, session not finished")
    for server in hb.get("servers") or []:
        if isinstance(server, dict) and server.get("state") in ("failing", "lost"):
            last = server.get("last_ok_unix_s")
            since = f"; no data for {now - float(last):.0f} s" if isinstance(last, int | float) else ""
            return status(LOST, f"{printable(server.get('url'))}: {printable(server.get('reason'))}"
                                f"{since}")
    dead = _engine_dead(session)
    if dead:
        return status(LOST, dead)
    last = _last_steps(session)
    if not last:
        return status(IDLE, f"{who} running; no engine step yet")
    t_last = max(t for _, _, t in last)
    quiet_s = now - t_last
    running = sum(r or 0 for r, _, _ in last)
    waiting = sum(w or 0 for _, w, _ in last)
    if (running == 0 and waiting == 0) or (mode == "record" and quiet_s >= IDLE_AFTER_S):
        return status(IDLE, f"{who} running, nothing running or waiting on the engine"
                            + ("s" if len(last) > 1 else "") + f" (last step {_ago(quiet_s)})")
    return status(RECORDING, f"{running} running, {waiting} waiting"
                             + (f" on {len(last)} engines" if len(last) > 1 else ""))


LAST_ROWS = 5000
"""``_last_steps`` reads this many of the newest step rows (rows are appended in time order per
process, so the newest rows hold every engine's last step; no scan of a long session)."""


def _last_steps(session: Session) -> list[tuple[int | None, int | None, float]]:
    """(running, waiting, t_unix_s) of each engine's newest step."""
    rows = session.rows(
        "SELECT engine_id, running, waiting, t_unix_s FROM steps WHERE rowid > "
        "(SELECT COALESCE(MAX(rowid), 0) FROM steps) - ? AND t_unix_s IS NOT NULL", (LAST_ROWS,))
    newest: dict[Any, tuple[int | None, int | None, float]] = {}
    for eid, running, waiting, t in rows:
        if eid not in newest or float(t) >= newest[eid][2]:
            newest[eid] = (running, waiting, float(t))
    return list(newest.values())


def _owner_pid(session: Session, mode: str | None) -> int | None:
    role = "attach" if mode == "attach" else "recorder"
    pid = session.scalar("SELECT pid FROM processes WHERE role = ? ORDER BY started_unix_s LIMIT 1",
                         (role,))
    return int(pid) if pid is not None else None


def _engine_dead(session: Session) -> str | None:
    """Why the recorded engine is dead: a frontend error after its last step saying so (and
    before a stop signal: vLLM's frontend may log an EngineDeadError while it shuts down)."""
    newest = _last_steps(session)
    last_step = max((t for _, _, t in newest), default=None)
    rows = session.rows(
        "SELECT message, t_unix_s FROM events WHERE kind IN ('error', 'oom') AND t_unix_s >= ? "
        "AND t_unix_s < COALESCE((SELECT MIN(t_unix_s) FROM events WHERE kind = 'stop_signal'), "
        "1e300) ORDER BY t_unix_s DESC LIMIT 20", (last_step or 0.0,))
    for message, _ in rows:
        if message and any(k in message for k in _ENGINE_DEAD):
            return f"engine lost: {printable(message.splitlines()[0][:200])}"
    return None


def window_bounds(session: Session, last_s: float) -> tuple[float, float] | None:
    """(start, end) unix seconds of the session's last ``last_s`` seconds of data (None: empty)."""
    start, end = session.bounds()
    if start is None or end is None:
        return None
    return max(float(end) - last_s, float(start)), float(end)


@dataclass
class LiveWindow:
    """Report, findings and forecasts of a session's last seconds, with its status."""

    t0_unix_s: float
    t1_unix_s: float
    start_unix_s: float
    status: LiveStatus
    report: dict[str, Any]
    findings: list[dict[str, Any]]
    forecasts: list[dict[str, Any]] = field(default_factory=list)


def status_of(path: str | Path, now_unix_s: float | None = None) -> LiveStatus:
    """``session_status`` of the session file at ``path``."""
    with open_session(path) as session:
        return session_status(session, now_unix_s)


def window_report(path: str | Path, window: tuple[float, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``build_report`` and ``diagnose`` of the rows in ``window`` (unix seconds) only."""
    with open_session(path, window=window) as session:
        findings = [f.as_dict() for f in diagnose(session)]
        return build_report(session, findings=findings), findings


def live_window(path: str | Path, window_s: float, now_unix_s: float | None = None) -> LiveWindow | None:
    """The Live page's numbers for the session's last ``window_s`` seconds (None: nothing yet)."""
    with open_session(path) as whole:
        status = session_status(whole, now_unix_s)
        bounds = window_bounds(whole, window_s)
        start, _ = whole.bounds()
    if bounds is None or start is None:
        return None
    with open_session(path, window=bounds) as session:
        findings = [f.as_dict() for f in diagnose(session)]
        report = build_report(session, findings=findings)
        ahead = [f.as_dict() for f in forecasts(session)]
    return LiveWindow(bounds[0], bounds[1], float(start), status, report, findings, ahead)
