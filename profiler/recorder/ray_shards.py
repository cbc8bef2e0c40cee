"""Ray executor (``--distributed-executor-backend ray``): shards of the workers on other nodes.

A Ray worker on another node than the engine core (the Ray driver) cannot reach the driver's
session file. Its recorder writes a local shard instead; when the engine shuts down, the driver
asks every worker for its shard through vLLM's own ``collective_rpc`` (a Ray actor call: the bytes
come back as its return value, ``ray.get``) and folds each into its session with
``profiler.session.shards.copy_shard``. A worker that cannot hand its shard back leaves a ``shard``
gap with the reason. No transport of kvscope's own.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV_DRIVER_NODE = "KVSCOPE_RAY_DRIVER_NODE"
"""Ray node id of the engine core that drives the workers (set by the driver for its workers)."""
ENV_SHARD_DIR = "KVSCOPE_RAY_SHARD_DIR"
"""Where a remote worker writes its shard (default: the temp folder's ``kvscope-ray-shards``)."""
ENV_PREFIX = "KVSCOPE_"

_local: str | None = None
_decided = False


def _forget_after_fork() -> None:
    global _local, _decided
    _local, _decided = None, False


os.register_at_fork(after_in_child=_forget_after_fork)


def settled() -> bool:
    """Whether ``local_shard``'s answer can no longer change in this process: it has decided, or
    this process is not a Ray worker of a kvscope driver."""
    return _decided or not os.environ.get(ENV_DRIVER_NODE)


def local_shard(session: str) -> str | None:
    """The local shard this process records into instead of ``session``: only in a Ray worker on
    another node than its driver (None otherwise, and while Ray is not connected)."""
    global _local, _decided
    if _decided:
        return _local
    driver = os.environ.get(ENV_DRIVER_NODE)
    ray = sys.modules.get("ray")
    if not driver or ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        node = ray.get_runtime_context().get_node_id()
    except Exception:
        return None
    _decided = True
    if node == driver:
        return None
    from profiler import __version__
    from profiler.session.shards import SHARD_KEY, shard_file_name
    from profiler.session.writer import get_writer

    folder = Path(os.environ.get(ENV_SHARD_DIR) or Path(tempfile.gettempdir()) / "kvscope-ray-shards")
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / shard_file_name(socket.gethostname(), os.getpid()))
    _local = path
    get_writer(path).set_meta_default(
        started_unix_s=time.time(), host=socket.gethostname(), kvscope_version=__version__,
        **{SHARD_KEY: {"host": socket.gethostname(), "pid": os.getpid(), "role": "ray_worker",
                       "ray_node_id": node, "driver_session": session}})
    return path


def hand_in(worker: Any = None) -> dict[str, Any] | None:
    """Run in each Ray worker at shutdown (through ``collective_rpc``): finish this worker's local
    shard and return its bytes; None when this worker wrote into the driver's session directly."""
    path = _local
    if path is None:
        return None
    from profiler.recorder import nvml
    from profiler.session.writer import get_writer

    nvml.stop_nvml_sampler()  # the allocator sampler's later rows stay queued, never written
    w = get_writer(path)
    w.flush()
    w.set_meta(ended_unix_s=time.time())
    w.close()
    src = sqlite3.connect(path)
    try:  # one self-contained file (WAL folded in) to send
        src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        src.close()
    data = Path(path).read_bytes()
    return {"name": Path(path).name, "host": socket.gethostname(), "pid": os.getpid(), "bytes": data}


def _no_writer() -> Any:
    return None


_writer: Callable[[], Any] = _no_writer
"""This process's session writer (``context.writer``, given by ``patch_executor``)."""


_RAY_EXECUTORS = (("vllm.v1.executor.ray_executor_v2", "RayExecutorV2"),
                  ("vllm.v1.executor.ray_executor", "RayDistributedExecutor"))


def patch_executor(patch: Callable[[type, str, Callable[..., Any]], None],
                   writer: Callable[[], Any], engine_core: type) -> None:
    """In the engine core (the Ray driver): wrap the Ray executor class the frontend chose, as the
    engine core receives it (``EngineCore.__init__``'s ``executor_class``; importing Ray's executor
    before would import Ray into every engine). ``writer`` returns this process's writer."""
    global _writer
    _writer = writer
    # vLLM loads plugins inside EngineCore.__init__, after the executor class it was handed was
    # imported: patch that class now (an engine core without Ray has not imported these)
    for module_name, name in _RAY_EXECUTORS:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type):
            patch_ray_class(cls, patch)
    init = engine_core.__dict__.get("__init__")
    if init is None or getattr(init, "__kvscope_ray__", False):
        return
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            cls = sig.bind_partial(self, *args, **kwargs).arguments.get("executor_class")
            if isinstance(cls, type) and getattr(cls, "uses_ray", False):
                patch_ray_class(cls, patch)
        except Exception:
            pass
        init(self, *args, **kwargs)

    __init__.__kvscope_ray__ = True  # type: ignore[attr-defined]
    engine_core.__init__ = __init__  # type: ignore[misc]


def patch_ray_class(cls: type, patch: Callable[[type, str, Callable[..., Any]], None]) -> None:
    """Wrap a Ray executor: its workers learn the driver's node, its shutdown gathers their shards."""
    # RayExecutorV2 (the default from 0.3x) hands workers every driver variable it gets from
    # its module's get_driver_env_vars; the older executor sends a list of env dicts
    module = sys.modules.get(cls.__module__)
    env_fn = getattr(module, "get_driver_env_vars", None)
    if callable(env_fn) and not getattr(env_fn, "__kvscope__", False):
        wrapped_env = _wrap_driver_env(env_fn)
        wrapped_env.__kvscope__ = True  # type: ignore[attr-defined]
        module.get_driver_env_vars = wrapped_env  # type: ignore[union-attr]
    for c in cls.__mro__:  # the class that defines each method
        if "_get_env_vars_to_be_updated" in vars(c):
            patch(c, "_get_env_vars_to_be_updated", _wrap_env_vars)
    for c in cls.__mro__:
        if "shutdown" in vars(c):
            patch(c, "shutdown", _wrap_shutdown)
            break


def _wrap_env_vars(method: Callable[..., Any]) -> Callable[..., Any]:
    """Send kvscope's variables and the driver's node id to every worker: vLLM copies only its own
    prefixes (``VLLM_``, ``HF_``, ...) to workers on other nodes."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        try:
            import ray

            mine = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
            if mine.get("KVSCOPE_SESSION"):
                mine[ENV_DRIVER_NODE] = ray.get_runtime_context().get_node_id()
                for env in out:
                    env.update(mine)
        except Exception:
            pass
        return out

    return wrapper


def _wrap_driver_env(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        try:
            import ray

            if isinstance(out, dict) and out.get("KVSCOPE_SESSION"):
                out[ENV_DRIVER_NODE] = ray.get_runtime_context().get_node_id()
        except Exception:
            pass
        return out

    return wrapper


def _wrap_shutdown(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        workers = getattr(self, "workers", None) or getattr(self, "ray_worker_handles", None)
        if not getattr(self, "_kvscope_gathered", False) and workers:
            self._kvscope_gathered = True
            try:
                gather(self)
            except Exception as exc:  # never stand in the way of the engine's shutdown
                w = _writer()
                if w is not None:
                    w.event("error", f"kvscope could not gather the Ray workers' shards: {exc!r}")
        return method(self, *args, **kwargs)

    return wrapper


GATHER_TIMEOUT_S = 60.0


def gather(executor: Any) -> int:
    """Ask every Ray worker for its shard and fold those handed back into this session; returns
    the number folded in. A worker that fails to answer leaves a gap with the reason."""
    w = _writer()
    if w is None:
        return 0
    t0 = time.time()
    try:
        shards = executor.collective_rpc(hand_in, timeout=GATHER_TIMEOUT_S)
    except Exception as exc:
        reason = (f"the Ray workers on other nodes did not hand back their shards at shutdown "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                  "their processes' rows are missing")
        from profiler.session.shards import GAP_SOURCE

        w.append("gaps", (None, _started_unix_s(w) or t0, time.time(), GAP_SOURCE, reason))
        w.set_meta(incomplete_reason=reason)
        w.flush()
        return 0
    folded = 0
    for item in shards or []:
        if not isinstance(item, dict) or not isinstance(item.get("bytes"), bytes):
            continue
        fold_in(w.path, item["name"], item["bytes"])
        folded += 1
        w.event("shard_gathered", f"shard {item['name']} of {item.get('host')} gathered through Ray "
                f"({len(item['bytes']):,} bytes)", host=item.get("host"), pid=item.get("pid"))
    return folded


def _started_unix_s(w: Any) -> float | None:
    """The session's start time as its file has it (None when not set)."""
    conn = sqlite3.connect(f"file:{w.path}?mode=ro", uri=True, timeout=10.0)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'started_unix_s'").fetchone()
    finally:
        conn.close()
    try:
        return float(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def fold_in(session: str, name: str, data: bytes) -> None:
    """Copy the shard ``data`` (a session file's bytes) into the session file ``session``."""
    from profiler.session.reader import open_session
    from profiler.session.shards import copy_shard

    with tempfile.TemporaryDirectory(prefix="kvscope-shard-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        with open_session(path) as shard:
            dst = sqlite3.connect(session, timeout=30.0, isolation_level=None)
            try:
                dst.execute("PRAGMA busy_timeout = 30000")
                dst.execute("BEGIN IMMEDIATE")
                try:
                    copy_shard(dst, shard.db)
                    dst.execute("COMMIT")
                except BaseException:
                    dst.execute("ROLLBACK")
                    raise
            finally:
                dst.close()
