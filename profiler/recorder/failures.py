"""Failure capture: an exception raised inside vLLM becomes one ``oom`` or ``error`` event with the
memory state of the process where it happened (recorded once, then re-raised by the caller)."""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable
from typing import Any

from profiler.recorder import context

_OOM_PATTERNS = re.compile(
    r"out of memory|OutOfMemoryError|No available memory for the cache blocks|"
    r"To serve at least one request|less than requested memory for kv|"
    r"Insufficient memory|not enough (?:GPU |KV cache )?memory|"
    r"larger than the available KV cache memory|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
"""Error texts that mean the engine ran out of (device or KV-cache) memory."""


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` (or its text) says the engine ran out of memory."""
    return "OutOfMemory" in type(exc).__name__ or bool(_OOM_PATTERNS.search(str(exc)))


def record_failure(exc: BaseException, where: str, engine_id: int | None = None) -> None:
    """Store ``exc`` as an ``oom`` or ``error`` event with the memory state of this process."""
    if getattr(exc, "__kvscope_recorded__", False):
        return
    try:
        exc.__kvscope_recorded__ = True  # type: ignore[attr-defined]
    except Exception:
        pass
    w = context.writer()
    if w is None:
        return
    from profiler.recorder.allocator import memory_state

    text = f"{type(exc).__name__}: {exc}"
    kind = "oom" if is_oom(exc) else "error"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    dp_rank = context.dp_rank()
    if engine_id is None and dp_rank is not None:
        engine_id = context.engine_id_of_this_process()
    extra = {"dp_rank": dp_rank} if dp_rank is not None else {}
    w.event(kind, text, engine_id, where=where, memory=memory_state(), traceback=tb, **extra)


def observe_failures(func: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``func`` wrapped so that what it raises is recorded (as happening in ``where``), then re-raised."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                record_failure(exc, where)
            raise

    return wrapper
