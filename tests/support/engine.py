"""Running real vLLM programs under kvscope: one engine at a time, a clean environment, the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "tests" / "support" / "workload.py"
ENGINE_LOCK = "/tmp/kvscope-engine.lock"


@contextmanager
def engine_lock() -> Iterator[None]:
    """Serialise real engines across concurrently running test processes (2-core machines)."""
    with open(ENGINE_LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def engine_env(**extra: str) -> dict[str, str]:
    """Environment for a child vLLM process: small CPU KV space, no leaked kvscope settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


KVSCOPE = [sys.executable, "-m", "profiler.cli"]
"""The ``kvscope`` command of this checkout (for ``subprocess.Popen``; ``kvscope()`` runs it)."""


def kvscope(*args: str, timeout_s: float = 600, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the ``kvscope`` CLI of this checkout and capture its output."""
    return subprocess.run(
        [*KVSCOPE, *args], capture_output=True, text=True,
        timeout=timeout_s, env=env or engine_env(), cwd=ROOT, check=check,
    )


class _CallStderr(io.TextIOBase):
    """``sys.stderr`` during one in-process CLI call: what the call's own threads write (the caller's
    and those it starts) is captured; threads alive before it (another test's lingering servers)
    and HTTP request handlers of the test's fakes write to the real stderr, so a foreign line can
    never land in the captured output."""

    def __init__(self, real: Any) -> None:
        self.real, self.buf = real, io.StringIO()
        self.before = {t.ident for t in threading.enumerate()} - {threading.get_ident()}

    def _mine(self) -> bool:
        t = threading.current_thread()
        return t.ident not in self.before and "process_request" not in t.name

    def write(self, text: str) -> int:
        return (self.buf if self._mine() else self.real).write(text)

    def flush(self) -> None:
        self.real.flush()


def kvscope_here(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``kvscope`` CLI's ``main`` in this process (what the console script runs), capturing
    its output: for the many quick ``report``/``whatif``/``attach`` runs of the unit tier. An escaped
    exception fails the test as a traceback would; ``kvscope()`` (a real process, with a timeout)
    is what proves no hang."""
    from profiler.cli import main

    out, err = io.StringIO(), _CallStderr(sys.stderr)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # attach sets them
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(["kvscope", *args], code, out.getvalue(), err.buf.getvalue())
