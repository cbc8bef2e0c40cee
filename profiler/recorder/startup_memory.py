"""Start-up memory collector: the worker's memory-profiling breakdown, stored once per worker.

vLLM decides the KV cache size in ``Worker.determine_available_memory``. kvscope wraps that call
and, after it returns, reads what vLLM measured: weights, activation peak, non-torch memory, the
CUDA-graph estimate and the KV cache bytes. Attribute names moved between releases, so each is
looked up in a short list and stored as NULL when absent. On CPU vLLM reports only the KV size.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from profiler.recorder import context
from profiler.recorder.failures import record_failure
from profiler.session.rows import StartupMemoryRow

_last_profile: Any = None
"""The MemoryProfilingResult of this process's last ``memory_profiling`` block (GPU only)."""


def capture_profiling_results() -> None:
    """Wrap ``memory_profiling`` where the GPU worker imported it, to keep its result object."""
    mod = sys.modules.get("vllm.v1.worker.gpu_worker")
    original = getattr(mod, "memory_profiling", None)
    if original is None or getattr(original, "__kvscope__", False):
        return

    @contextlib.contextmanager
    def memory_profiling(*args: Any, **kwargs: Any) -> Iterator[Any]:
        global _last_profile
        with original(*args, **kwargs) as result:
            _last_profile = result
            yield result

    memory_profiling.__kvscope__ = True  # type: ignore[attr-defined]
    mod.memory_profiling = memory_profiling  # type: ignore[union-attr]


def _first(*values: Any) -> int | None:
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    return None


def breakdown(worker: Any, kv_cache_bytes: int | None, profile: Any) -> dict[str, Any]:
    """The start-up memory breakdown of one worker, from what vLLM measured (None if unknown)."""
    snap = getattr(worker, "init_snapshot", None)
    cache = getattr(worker, "cache_config", None)
    runner = getattr(worker, "model_runner", None)
    total = _first(getattr(snap, "total_memory", None))
    device = str(getattr(getattr(worker, "device", None), "type", None) or "unknown")
    if total is None and device == "cpu":
        with contextlib.suppress(Exception):
            import psutil

            total = psutil.virtual_memory().total
    util = getattr(cache, "gpu_memory_utilization", None)
    budget = _first(
        getattr(worker, "requested_memory", None),
        getattr(worker, "requested_cpu_memory", None),
        total * util if total is not None and isinstance(util, float) else None,
    )
    return {
        "device": device,
        "total_bytes": total,
        "budget_bytes": budget,
        "weights_bytes": _first(
            getattr(profile, "weights_memory", None), getattr(runner, "model_memory_usage", None)
        ),
        "activation_peak_bytes": _first(
            getattr(profile, "torch_peak_increase", None),
            getattr(worker, "peak_activation_memory", None),
        ),
        "non_torch_bytes": _first(
            getattr(profile, "non_torch_increase", None), getattr(worker, "non_torch_memory", None)
        ),
        "cuda_graph_bytes": _first(getattr(worker, "cudagraph_memory_estimate", None)),
        "kv_cache_bytes": _first(
            kv_cache_bytes, getattr(worker, "available_kv_cache_memory_bytes", None)
        ),
        "free_after_bytes": _first(getattr(getattr(profile, "after_profile", None), "free_memory", None)),
        "profile_s": getattr(profile, "profile_time", None),
    }


def wrap_determine_available_memory(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrapper that stores a ``startup_memory`` row, or an oom/error event when profiling fails."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            kv = method(self, *args, **kwargs)
        except BaseException as exc:
            record_failure(exc, "worker: memory profiling")
            raise
        w = context.writer()
        if w is not None:
            try:
                b = breakdown(self, kv if isinstance(kv, int) else None, _last_profile)
                w.append("startup_memory", StartupMemoryRow(
                    t_unix_s=time.time(), pid=os.getpid(), rank=getattr(self, "rank", None), **b))
                w.flush()
            except Exception as exc:
                w.event("error", f"kvscope could not read the start-up memory profile: {exc!r}")
        return kv

    return wrapper
