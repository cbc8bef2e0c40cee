"""Process-wide recording context: which session, which process role, who owns the session.

Every process of a recorded program (frontend, engine core, workers) finds the session through
environment variables inherited from the process that started recording. The *owner* writes the
session's start/end metadata and runs the NVML sampler; exactly one process claims it.
"""

from __future__ import annotations

import atexit
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

from profiler.recorder import ray_shards
from profiler.session.heartbeat import Heartbeat
from profiler.session.rows import ProcessRow
from profiler.session.schema import ENGINE_HEADLESS, ENGINE_INPROC
from profiler.session.writer import SessionWriter, get_writer

ENV_SESSION = "KVSCOPE_SESSION"
"""Path of the session file; recording is on in any process that sees it."""
ENV_OWNER_PID = "KVSCOPE_OWNER_PID"
"""Pid of the process that owns the session (set once claimed, inherited by children)."""
ENV_NVML_INTERVAL_MS = "KVSCOPE_NVML_INTERVAL_MS"
"""NVML sampling period in milliseconds (default 100)."""
ENV_ALLOCATOR_INTERVAL_MS = "KVSCOPE_ALLOCATOR_INTERVAL_MS"
"""Worker allocator sampling period in milliseconds (default 100)."""

DEFAULT_INTERVAL_MS = 100

_heartbeat: Heartbeat | None = None
"""The owner's heartbeat (``profiler.session.heartbeat``): the session is still being recorded."""

_registered_roles: set[tuple[str, int | None]] = set()
os.register_at_fork(after_in_child=_registered_roles.clear)


_dp_rank: int | None = None
"""Data-parallel rank of the engine this process (engine core or worker) belongs to."""
os.register_at_fork(after_in_child=lambda: globals().update(_dp_rank=None))


def set_dp_rank(rank: int) -> None:
    """This process belongs to the engine of data-parallel rank ``rank``."""
    global _dp_rank
    _dp_rank = rank


def dp_rank() -> int | None:
    """The data-parallel rank set by ``set_dp_rank`` (None in a frontend)."""
    return _dp_rank


def engine_id_of_this_process() -> int | None:
    """The session engine id of this engine core's or worker's engine: the frontend's engine row
    of the same index (vLLM numbers engines by data-parallel rank), or on a node without a
    frontend the engine core's own (``headless``) row. None in a frontend, or while the frontend
    has not described that engine yet."""
    path = session_path()
    if _dp_rank is None or path is None:
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            row = conn.execute(
                "SELECT engine_id FROM engines WHERE engine_index = ? "
                "AND source IN (?, ?) ORDER BY engine_id DESC LIMIT 1",
                (_dp_rank, ENGINE_INPROC, ENGINE_HEADLESS)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row and row[0] is not None else None


def session_path() -> str | None:
    """The session file this process records into, or None when recording is off.

    A folder (an existing directory, or a path ending in ``/``) is a folder session: the first
    process that sees it picks its shard there, ``<host>-<pid>.kvscope``, and exports that file to
    its children (``profiler.session.shards``). A Ray worker on another node than its driver
    records into a local shard that the driver gathers at shutdown (``ray_shards``).
    """
    path = os.environ.get(ENV_SESSION) or None
    if path is None:
        return None
    if path != _checked_path[0]:  # once per value: this runs for every recorded row
        if path.endswith(("/", os.sep)) or os.path.isdir(path):
            path = _start_shard(path)
        _checked_path[0] = path
    return ray_shards.local_shard(path) or path


_checked_path: list[str | None] = [None]
"""The last ``KVSCOPE_SESSION`` value found to be a file (not a folder session)."""


def session_arg(path: Path, folder: bool) -> str:
    """``KVSCOPE_SESSION``'s value for ``path``: a folder session keeps its trailing separator."""
    return str(path) + os.sep if folder else str(path)


def _start_shard(folder: str) -> str:
    """Make this process the recorder of a new shard in ``folder``; returns the shard's file."""
    from profiler.session.shards import shard_file_name

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(os.path.abspath(folder), shard_file_name(socket.gethostname(), os.getpid()))
    os.environ[ENV_SESSION] = path
    return path


_cached: list[tuple[tuple[str | None, str | None], SessionWriter]] = []
"""((``KVSCOPE_SESSION``, the Ray driver node), writer) once the shard this process writes is
settled: the hot path (every step's rows) then costs two environment reads instead of resolving
the path each time."""
os.register_at_fork(after_in_child=_cached.clear)


def writer() -> SessionWriter | None:
    """This process's writer for the active session (None when recording is off)."""
    key = (os.environ.get(ENV_SESSION), os.environ.get(ray_shards.ENV_DRIVER_NODE))
    if _cached and _cached[0][0] == key and not _cached[0][1].closed:
        return _cached[0][1]
    path = session_path()
    if path is None:
        return None
    w = get_writer(path)
    key = (os.environ.get(ENV_SESSION), key[1])  # a folder session named its shard
    _cached[:] = [(key, w)] if ray_shards.settled() else []
    return w


def interval_s(env_name: str) -> float:
    """A sampling period from the environment, in seconds (bad values fall back to the default)."""
    try:
        ms = float(os.environ.get(env_name, DEFAULT_INTERVAL_MS))
    except ValueError:
        ms = DEFAULT_INTERVAL_MS
    return max(ms, 1.0) / 1000.0


def register_process(role: str, rank: int | None = None, engine_id: int | None = None) -> None:
    """Record that this pid plays ``role`` (frontend, engine_core, worker, recorder) once."""
    w = writer()
    if w is None or (role, rank) in _registered_roles:
        return
    _registered_roles.add((role, rank))
    w.append("processes", ProcessRow(pid=os.getpid(), role=role, rank=rank, engine_id=engine_id,
                                     host=socket.gethostname(), started_unix_s=time.time()))


def claim_owner(command: list[str] | None = None) -> bool:
    """Become the session's owner unless another process already is; returns True if claimed.

    The owner writes start metadata now, starts the NVML sampler, and marks the session complete
    when this process exits normally.
    """
    w = writer()
    if w is None or os.environ.get(ENV_OWNER_PID):
        return False
    os.environ[ENV_OWNER_PID] = str(os.getpid())
    from profiler import __version__

    w.set_meta_default(
        started_unix_s=time.time(),
        host=socket.gethostname(),
        kvscope_version=__version__,
        command=command if command is not None else list(sys.argv),
        shard={"host": socket.gethostname(), "pid": os.getpid(), "role": "recorder"},
    )
    from profiler.recorder.nvml import start_nvml_sampler

    start_nvml_sampler(w, interval_s(ENV_NVML_INTERVAL_MS))
    global _heartbeat
    _heartbeat = Heartbeat(w, "record").start()
    atexit.register(finish_session, w)
    return True


def finish_session(w: SessionWriter, exit_code: int | None = None) -> None:
    """Mark the session complete (owner only) and flush it; idempotent."""
    if w.closed:
        return
    try:
        from profiler.recorder.nvml import stop_nvml_sampler

        stop_nvml_sampler()
        if _heartbeat is not None:
            _heartbeat.stop()
        w.flush()
        w.set_meta(ended_unix_s=time.time(), exit_code=exit_code)
        w.close()
    except Exception as exc:  # never fail the user's exit
        print(f"kvscope: could not finish session: {exc}", file=sys.stderr)
