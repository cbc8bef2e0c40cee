"""The one-line Python API: ``with profiler.record("run.kvscope"): llm = LLM(...)``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from profiler.recorder import context


@contextmanager
def record(session: str | Path, nvml_interval_ms: int | None = None) -> Iterator[Path]:
    """Record every vLLM engine created in this block (and its engine-core and worker processes).

    The session path is exported as KVSCOPE_SESSION so that vLLM's spawned processes record into
    the same file; it is restored on exit and the session is marked complete.
    """
    folder = str(session).endswith(("/", os.sep)) or os.path.isdir(session)
    path = Path(session).resolve()
    saved = {k: os.environ.get(k) for k in (context.ENV_SESSION, context.ENV_OWNER_PID,
                                             context.ENV_NVML_INTERVAL_MS)}
    os.environ[context.ENV_SESSION] = context.session_arg(path, folder)
    os.environ.pop(context.ENV_OWNER_PID, None)
    if nvml_interval_ms is not None:
        os.environ[context.ENV_NVML_INTERVAL_MS] = str(nvml_interval_ms)
    w = context.writer()
    assert w is not None
    context.claim_owner()
    context.register_process("frontend")
    from profiler.recorder import plugin as hooks

    hooks.install()  # vLLM may already have loaded its plugins before recording was switched on
    exit_code = 0
    try:
        yield path
    except BaseException:
        exit_code = 1
        raise
    finally:
        context.finish_session(w, exit_code=exit_code)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
