"""Running real vLLM programs under kvscope: one engine at a time, a clean environment, the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def kvscope_here(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``kvscope`` CLI's ``main`` in this process (what the console script runs), capturing
    its output: for the many quick ``report``/``whatif`` runs of the unit tier. An escaped
    exception fails the test as a traceback would; ``kvscope()`` (a real process, with a timeout)
    is what proves no hang."""
    from profiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # attach sets them
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(["kvscope", *args], code, out.getvalue(), err.getvalue())
