"""NVML collector: device memory used/total and per-process memory, sampled on a daemon thread.

Runs in the session owner only (never inside the engine's processes). On a machine without a
usable NVML it records one ``nvml_off`` event saying why and stops; everything else keeps going.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from profiler.session.rows import GpuProcessSampleRow, GpuRow, GpuSampleRow
from profiler.session.writer import SessionWriter


@dataclass
class NvmlStats:
    """What one sampler achieved, for the benchmark."""

    samples: int = 0
    """Sampling rounds completed (all devices each)."""
    busy_s: float = 0.0
    """Wall time spent inside NVML queries and row building."""
    process_rounds: int = 0
    """Rounds that also read the per-process list."""
    started_s: float = 0.0
    """Monotonic start time."""


_thread: threading.Thread | None = None
_stop = threading.Event()
stats = NvmlStats()


def _forget_after_fork() -> None:
    global _thread
    _thread = None  # the sampler thread stays in the parent; the child is never the owner


os.register_at_fork(after_in_child=_forget_after_fork)


def start_nvml_sampler(writer: SessionWriter, period_s: float) -> bool:
    """Start sampling every ``period_s``; returns False (after one event) when NVML is unusable."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return True
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise RuntimeError("no NVIDIA device found")
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception as exc:
        writer.event("nvml_off", f"GPU memory sampling off: {_reason(exc)}")
        return False
    for i, h in enumerate(handles):
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        writer.append("gpus", GpuRow(device_index=i, name=_text(pynvml.nvmlDeviceGetName(h)),
                                     uuid=_uuid(pynvml, h), total_bytes=mem.total))
    _stop.clear()
    _thread = threading.Thread(
        target=_run, args=(writer, handles, period_s), name="kvscope-nvml", daemon=True
    )
    _thread.start()
    return True


def stop_nvml_sampler() -> None:
    """Stop the sampler thread and wait for its last round."""
    global _thread
    _stop.set()
    if _thread is not None:
        _thread.join(timeout=2.0)
    _thread = None


PROCESS_PERIOD_S = 0.25
"""Per-process memory is read at most every 0.25 s, whatever the device sampling period: the
process list changes rarely and costs the most CPU of the two NVML queries."""


def _run(writer: SessionWriter, handles: list[object], period_s: float) -> None:
    import pynvml

    stats.started_s = time.monotonic()
    next_s = time.monotonic()
    failures = 0
    next_processes_s = 0.0
    while not _stop.is_set():
        t0 = time.monotonic()
        with_processes = t0 >= next_processes_s
        if with_processes:
            next_processes_s = t0 + PROCESS_PERIOD_S
            stats.process_rounds += 1
        try:
            _sample_once(pynvml, writer, handles, with_processes)
            stats.samples += 1
            failures = 0
        except Exception as exc:
            failures += 1
            if failures == 1:
                writer.event("error", f"NVML sample failed: {_reason(exc)}", source="nvml")
        stats.busy_s += time.monotonic() - t0
        next_s += period_s
        delay = next_s - time.monotonic()
        if delay < 0:  # fell behind: skip missed ticks instead of bursting
            next_s = time.monotonic()
            delay = 0
        _stop.wait(delay)


def _sample_once(
    pynvml: Any, writer: SessionWriter, handles: list[object], with_processes: bool
) -> None:
    now = time.time()
    for i, h in enumerate(handles):
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        writer.append("gpu_samples", GpuSampleRow(now, i, mem.used, mem.total))
        if not with_processes:
            continue
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            used = p.usedGpuMemory
            # NVML reports "not available" as a huge sentinel; store None, never a fake number.
            writer.append("gpu_process_samples",
                          GpuProcessSampleRow(now, i, p.pid, used if used < 1 << 60 else None))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uuid(pynvml: object, handle: object) -> str | None:
    try:
        return _text(pynvml.nvmlDeviceGetUUID(handle))  # type: ignore[attr-defined]
    except Exception:
        return None
