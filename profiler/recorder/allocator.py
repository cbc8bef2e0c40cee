"""Worker allocator collector: torch CUDA caching-allocator counters sampled on a daemon thread.

Runs inside each vLLM worker process once its device is set. Reading the counters never
initialises CUDA and never synchronises the device, so the engine's hot path is untouched.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from profiler.session.rows import AllocatorSampleRow
from profiler.session.writer import SessionWriter

_started = False


def _forget_after_fork() -> None:
    global _started
    _started = False  # threads do not survive fork: a forked worker starts its own sampler


os.register_at_fork(after_in_child=_forget_after_fork)


def start_allocator_sampler(writer: SessionWriter, period_s: float) -> None:
    """Sample this worker's allocator every ``period_s``; says once why when it cannot."""
    global _started
    if _started:
        return
    _started = True
    try:
        import torch

        if not torch.cuda.is_available():
            writer.event("allocator_off", "allocator sampling off: no CUDA device in this worker")
            return
        device = torch.cuda.current_device()
    except Exception as exc:
        writer.event("allocator_off", f"allocator sampling off: {exc}")
        return
    threading.Thread(
        target=_run, args=(writer, device, period_s), name="kvscope-alloc", daemon=True
    ).start()


def _run(writer: SessionWriter, device: int, period_s: float) -> None:
    import torch

    pid = os.getpid()
    while True:
        try:
            s = torch.cuda.memory_stats(device)
            if s:
                writer.append("allocator_samples", _row(pid, device, s))
        except Exception:
            pass  # the worker may be shutting down
        time.sleep(period_s)


def _row(pid: int, device: int, s: dict[str, Any]) -> AllocatorSampleRow:
    return AllocatorSampleRow(
        t_unix_s=time.time(), pid=pid, device_index=device,
        allocated_bytes=s.get("allocated_bytes.all.current"),
        reserved_bytes=s.get("reserved_bytes.all.current"),
        peak_allocated_bytes=s.get("allocated_bytes.all.peak"),
        alloc_retries=s.get("num_alloc_retries"), ooms=s.get("num_ooms"),
    )


def memory_state() -> dict[str, Any]:
    """Memory at this moment, for OOM events: CUDA allocator and device, else host RAM."""
    state: dict[str, Any] = {"pid": os.getpid()}
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            dev = torch.cuda.current_device()
            s = torch.cuda.memory_stats(dev)
            free_bytes, total_bytes = torch.cuda.mem_get_info(dev)
            state.update(
                device_index=dev, free_bytes=free_bytes, total_bytes=total_bytes,
                allocated_bytes=s.get("allocated_bytes.all.current"),
                reserved_bytes=s.get("reserved_bytes.all.current"),
                peak_allocated_bytes=s.get("allocated_bytes.all.peak"),
                alloc_retries=s.get("num_alloc_retries"), ooms=s.get("num_ooms"),
            )
            return state
    except Exception as exc:
        state["cuda_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        import psutil

        vm = psutil.virtual_memory()
        state.update(
            host_rss_bytes=psutil.Process().memory_info().rss,
            host_available_bytes=vm.available, host_total_bytes=vm.total,
        )
    except Exception:
        pass
    return state
