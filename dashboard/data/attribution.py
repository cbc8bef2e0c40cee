"""Who holds a GPU's memory over time: each engine process split into weights, KV cache and
activations/other, each process outside the session by pid, and what NVML attributes to nobody.

Built from NVML device samples (the total), NVML per-process samples (each process), the start-up
profile (weights per worker) and the KV cache the engine held (blocks × bytes per block). A
process's parts never exceed what NVML saw it use; the remainder of the device total is the
driver's context plus processes NVML did not list. Where an OOM's text names a process outside the
session that NVML listed with less than it held, that remainder carries its pid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboard.data.downsample import minmax_indices
from dashboard.data.session import SessionData
from profiler import units
from profiler.analysis.devices import device_reasons
from profiler.units import GIB, is_number

WEIGHTS, KV, OTHER = "weights", "KV cache", "activations + other"
DRIVER = "driver / not attributed"
"""The device total that no listed process accounts for (CUDA contexts, unlisted processes)."""

_OOM_PROCESS = re.compile(r"Process (?P<pid>\d+) has (?P<used>[\d.]+) (?P<unit>[KMGT]iB) memory in use")
_UNIT = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

COLUMNS = ["t_s", "band", "gib", "order", "owner", "kind"]


@dataclass(frozen=True)
class ForeignAtOom:
    """A process outside the session that an OOM's text names, with what it held then."""

    pid: int
    used_bytes: float
    t_s: float


def foreign_at_oom(data: SessionData, own: set[int]) -> list[ForeignAtOom]:
    """Processes outside the session named by the session's OOM messages."""
    ev = data.events[data.events["kind"] == "oom"] if not data.events.empty else data.events
    out = []
    for row in ev.itertuples(index=False):
        for m in _OOM_PROCESS.finditer(str(row.message or "")):
            pid = int(m["pid"])
            if pid not in own and is_number(row.t_s):
                out.append(ForeignAtOom(pid, float(m["used"]) * _UNIT[m["unit"]], float(row.t_s)))
    return out


def own_pids(data: SessionData) -> set[int]:
    """Pids of the session's own processes."""
    if data.processes.empty:
        return set()
    return {int(p) for p in data.processes["pid"].dropna()}


def _on_grid(t: np.ndarray, samples: pd.DataFrame, interval_s: float) -> np.ndarray:
    """A process's used bytes at each time of ``t``: the nearest sample within 2.5 sampling
    intervals, and nothing before its first or after its last sample (beyond 0.6 of an interval)."""
    s = samples.dropna(subset=["used_bytes"]).sort_values("t_s")
    if s.empty:
        return np.zeros_like(t)
    grid = pd.DataFrame({"t_s": t})
    merged = pd.merge_asof(grid, s[["t_s", "used_bytes"]], on="t_s", direction="nearest",
                           tolerance=2.5 * interval_s)
    used = merged["used_bytes"].fillna(0.0).to_numpy(dtype=float)
    edge = 0.6 * interval_s
    alive = (t >= float(s["t_s"].iloc[0]) - edge) & (t <= float(s["t_s"].iloc[-1]) + edge)
    return np.where(alive, used, 0.0)


def _startup_by_pid(data: SessionData) -> dict[int, pd.Series]:
    sm = data.startup_memory
    if sm.empty:
        return {}
    return {int(r["pid"]): r for _, r in sm.iterrows() if is_number(r.get("pid"))}


def _label(data: SessionData, pid: int) -> str:
    rows = data.processes[data.processes["pid"] == pid] if not data.processes.empty else data.processes
    if rows.empty:
        return units.fmt_pid(pid)
    workers = rows[rows["role"] == "worker"]
    r = workers.iloc[0] if not workers.empty else rows.iloc[0]
    role = str(r["role"])
    if role == "worker" and is_number(r.get("rank")):
        role = f"worker {int(r['rank'])}"
    return f"{role} ({units.fmt_pid(pid)})"


def device_attribution(data: SessionData, device: int, t0_s: float, t1_s: float, buckets: int,
                       kv_bytes: float | None) -> pd.DataFrame:
    """Stacked memory bands of ``device`` over [t0_s, t1_s] (GiB, long format: ``COLUMNS``).

    ``kv_bytes`` is what one worker's KV cache held (blocks × bytes per block); when unknown the
    start-up profile's KV figure is used. Empty without NVML device samples.
    """
    dev = data.gpu_samples[data.gpu_samples["device_index"] == device].dropna(subset=["used_bytes"])
    dev = dev.sort_values("t_s")
    if dev.empty:
        return pd.DataFrame(columns=COLUMNS)
    t_all = dev["t_s"].to_numpy(dtype=float)
    keep = minmax_indices(t_all, dev["used_bytes"].to_numpy(dtype=float), t0_s, t1_s, buckets)
    if keep.size == 0:
        return pd.DataFrame(columns=COLUMNS)
    # one sample either side, so the bands reach the edges of the view
    keep = np.unique(np.clip(np.r_[keep.min() - 1, keep, keep.max() + 1], 0, len(dev) - 1))
    t = t_all[keep]
    total = dev["used_bytes"].to_numpy(dtype=float)[keep]
    ps = data.gpu_process_samples
    ps = ps[ps["device_index"] == device] if not ps.empty else ps
    own = own_pids(data)
    interval = float(np.median(np.diff(np.sort(ps["t_s"].unique())))) if len(ps) > 2 else 1.0
    interval = max(interval, 0.05)
    startup = _startup_by_pid(data)
    bands: list[tuple[str, np.ndarray, str, str]] = []  # (band, bytes, owner, kind)
    accounted = np.zeros_like(total)
    pids = sorted(ps["pid"].dropna().astype(int).unique()) if not ps.empty else []
    for pid in [p for p in pids if p in own]:
        # NVML's per-process samples are sparser than the device's: never more than the device held
        used = np.minimum(_on_grid(t, ps[ps["pid"] == pid], interval), np.maximum(total - accounted, 0.0))
        if not used.any():
            continue
        name = _label(data, pid)
        row = startup.get(pid)
        if row is None:
            bands.append((name, used, name, "process"))
        else:
            w_total = float(row["weights_bytes"]) if is_number(row.get("weights_bytes")) else 0.0
            kv_total = kv_bytes if kv_bytes is not None else (
                float(row["kv_cache_bytes"]) if is_number(row.get("kv_cache_bytes")) else 0.0)
            kv_total = max(kv_total, 0.0)
            t_kv = float(row["t_s"]) if is_number(row.get("t_s")) else -np.inf
            w = np.minimum(w_total, used)
            k = np.where(t >= t_kv, np.minimum(kv_total, used - w), 0.0)
            bands += [(f"{name}: {WEIGHTS}", w, name, WEIGHTS), (f"{name}: {KV}", k, name, KV),
                      (f"{name}: {OTHER}", used - w - k, name, OTHER)]
        accounted += used
    foreign: dict[int, np.ndarray] = {}
    for pid in [p for p in pids if p not in own]:
        used = np.minimum(_on_grid(t, ps[ps["pid"] == pid], interval), np.maximum(total - accounted, 0.0))
        if used.max(initial=0.0) > 0:
            foreign[pid] = used
            accounted += used
    rest = np.maximum(total - accounted, 0.0)
    named = foreign_at_oom(data, own) if device_matches_oom(data, device) else []
    if named:
        # What the device held beyond the listed processes, while a process the OOM names was
        # there (from NVML's first sight of it, or a second before the OOM, until the device
        # dropped back), is that process's.
        baseline = float(np.percentile(rest, 10)) if rest.size else 0.0
        excess = np.maximum(rest - baseline, 0.0)
        first_seen = {int(p): float(g["t_s"].min()) for p, g in ps.groupby("pid")} if not ps.empty else {}
        for f in named:
            start = min(first_seen.get(f.pid, f.t_s - 1.0), f.t_s)
            after = (t > f.t_s) & (rest <= baseline + 0.1 * f.used_bytes)
            end = float(t[after][0]) if after.any() else float(t[-1]) + 1.0
            blamed = np.where((t >= start) & (t < end), np.minimum(excess, f.used_bytes * 1.05), 0.0)
            excess -= blamed
            rest -= blamed
            foreign[f.pid] = foreign.get(f.pid, np.zeros_like(t)) + blamed
    for pid, used in foreign.items():
        if used.any():
            bands.append((f"pid {pid} (outside the session)", used, f"pid {pid}", "foreign"))
    bands.append((DRIVER, rest, "", "driver"))
    parts = [pd.DataFrame({"t_s": t, "band": band, "gib": v / GIB, "order": i, "owner": owner, "kind": kind})
             for i, (band, v, owner, kind) in enumerate(bands)]
    return pd.concat(parts, ignore_index=True)


def device_matches_oom(data: SessionData, device: int) -> bool:
    """True when the session's OOM happened on ``device`` (its memory state says so, or it does not
    say and the session has one device with samples)."""
    ev = data.events[data.events["kind"] == "oom"] if not data.events.empty else data.events
    devices = set()
    for raw in ev.get("details_json", pd.Series(dtype=str)).dropna():
        try:
            d = (json.loads(raw).get("memory") or {}).get("device_index")
        except (ValueError, AttributeError, RecursionError):
            continue
        if is_number(d):
            devices.add(int(d))
    if devices:
        return device in devices
    m = re.search(r"GPU (\d+) has a total capacity", " ".join(ev["message"].astype(str))) if not ev.empty else None
    return int(m.group(1)) == device if m else False


def shown_devices(data: SessionData, findings: list[dict[str, Any]]) -> dict[int, str]:
    """The session's GPUs worth a chart, with why (see ``profiler.analysis.devices``)."""
    return device_reasons(data.gpus, data.gpu_samples, data.gpu_process_samples,
                          data.allocator_samples, own_pids(data), findings)
