"""Which GPUs a session is about: the engine's devices, and others only when something on them matters.

A single-GPU engine on a two-GPU host records both devices (NVML sees the host); the idle one is
noise on every page. A device is shown when the session's own processes used it, when a finding
names it, when a process outside the session held real memory on it, or when its used memory moved
by at least ``MOVED_BYTES`` during the session.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from profiler.analysis.diagnosis import thresholds as th
from profiler.units import fmt_pid

MOVED_BYTES = 2**30
"""A device whose NVML used memory varied by at least this much during the session is shown."""


def device_reasons(gpus: pd.DataFrame, gpu_samples: pd.DataFrame, process_samples: pd.DataFrame,
                   allocator_samples: pd.DataFrame, own_pids: set[int],
                   findings: list[dict[str, Any]] | None = None) -> dict[int, str]:
    """Device index -> why it is shown (``"engine"`` for the session's own devices); devices left
    out had nothing to show. Without per-process data every device is shown."""
    known: set[int] = set()
    for frame in (gpus, gpu_samples):
        if not frame.empty:
            known |= {int(d) for d in frame["device_index"].dropna()}
    devices = sorted(known)
    out: dict[int, str] = {}
    own_seen = False
    if not process_samples.empty:
        ps = process_samples.dropna(subset=["device_index", "pid"])
        mine = ps[ps["pid"].astype(int).isin(own_pids)]
        own_seen = own_seen or not mine.empty
        for d in mine["device_index"].astype(int).unique():
            out[int(d)] = "engine"
        foreign = ps[~ps["pid"].astype(int).isin(own_pids)]
        for (d, pid), g in foreign.groupby(["device_index", "pid"]):
            peak = g["used_bytes"].max()
            if pd.notna(peak) and peak >= th.FOREIGN_PROCESS_MIN_BYTES and int(d) not in out:
                out[int(d)] = f"{fmt_pid(pid)} outside the session used memory on it"
    if not allocator_samples.empty and "device_index" in allocator_samples:
        al = allocator_samples.dropna(subset=["device_index"])
        al = al[al["pid"].isin(own_pids)] if "pid" in al else al
        for d in al["device_index"].astype(int).unique():
            out.setdefault(int(d), "engine")
            own_seen = True
    for f in findings or []:
        d = (f.get("metrics") or {}).get("device_index")
        if isinstance(d, int | float) and not isinstance(d, bool) and int(d) in devices:
            out.setdefault(int(d), f"{f.get('code')} names it")
    if not own_seen:
        return {d: out.get(d, "the session's processes were not seen per device") for d in devices}
    if not gpu_samples.empty:
        for d, g in gpu_samples.dropna(subset=["device_index"]).groupby("device_index"):
            used = g["used_bytes"].dropna()
            if len(used) and float(used.max() - used.min()) >= MOVED_BYTES:
                out.setdefault(int(d), "its memory use changed during the session")
    return {d: out[d] for d in devices if d in out}
