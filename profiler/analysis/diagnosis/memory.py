"""Diagnosis rules for device memory: start-up OOM, runtime OOM, GPU memory pressure."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.diagnosis.findings import (
    CRITICAL,
    WARNING,
    Finding,
    session_t0,
    startup_row,
)
from profiler.session.reader import Session
from profiler.session.schema import BYTES_MAX
from profiler.units import fmt_bytes, fmt_pid, plausible

_KV_TOO_SMALL = re.compile(
    r"max seq len \((?P<len>\d+)\), \((?P<need>[\d.]+) GiB KV cache is needed, which is larger "
    r"than the available KV cache memory \((?P<have>[\d.]+) GiB\)"
)
"""vLLM's start-up refusal when one max_model_len request does not fit the KV cache."""
_ESTIMATED_LEN = re.compile(r"estimated maximum model length is (\d+)")
_NO_KV_MEMORY = "No available memory for the cache blocks"
_UNIT = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TORCH_OOM = re.compile(
    r"Tried to allocate (?P<req>[\d.]+) (?P<req_u>[KMGT]iB)\.\s+GPU (?P<gpu>\d+) has a total capacity "
    r"of (?P<total>[\d.]+) (?P<total_u>[KMGT]iB) of which (?P<free>[\d.]+) (?P<free_u>[KMGT]iB) is free"
)
"""PyTorch's CUDA OOM text (2.x)."""
_TORCH_OOM_PROCESS = re.compile(r"Process (?P<pid>\d+) has (?P<used>[\d.]+) (?P<unit>[KMGT]iB) memory in use")
"""Other processes on the device, as PyTorch's OOM text lists them."""
_TORCH_OOM_SLACK = re.compile(
    r"(?P<alloc>[\d.]+) (?P<alloc_u>[KMGT]iB) is allocated by PyTorch, and (?P<slack>[\d.]+) "
    r"(?P<slack_u>[KMGT]iB) is reserved by PyTorch but unallocated"
)
_RUNTIME_WHERE = ("busy loop", "execute_model", "sample_tokens")
"""Event ``where`` values that mean the engine was serving."""


@dataclass(frozen=True)
class OomEvent:
    """One stored ``oom`` event."""

    t_unix_s: float
    pid: int | None
    engine_id: int | None
    message: str
    where: str
    memory: dict[str, Any]


def oom_events(session: Session) -> list[OomEvent]:
    """The session's ``oom`` events in time order."""
    df = session.table("events", "WHERE kind = 'oom' ORDER BY t_unix_s")
    out = []
    for row in df.itertuples(index=False):
        try:
            details = json.loads(row.details_json) if isinstance(row.details_json, str) else {}
        except (ValueError, RecursionError):
            details = {}
        pid = None if pd.isna(row.pid) else int(row.pid)
        eid = None if pd.isna(row.engine_id) else int(row.engine_id)
        if not isinstance(details, dict) or pd.isna(row.t_unix_s):
            details = {} if not isinstance(details, dict) else details
            if pd.isna(row.t_unix_s):
                continue  # an OOM without a time cannot be placed
        where = details.get("where")
        memory = details.get("memory")
        memory = {k: v for k, v in memory.items()
                  if isinstance(k, str) and plausible(v, 1 if k == "total_bytes" else 0, BYTES_MAX)
                  is not None} if isinstance(memory, dict) else {}
        out.append(OomEvent(float(row.t_unix_s), pid, eid, str(row.message or ""),
                            where if isinstance(where, str) else "", memory))
    return out


def _serving_since(session: Session) -> float | None:
    """When the first engine was ready to serve (its ``engine_start`` event or first step)."""
    times = [session.scalar("SELECT MIN(t_unix_s) FROM steps"),
             session.scalar("SELECT MIN(t_unix_s) FROM events WHERE kind = 'engine_start'")]
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _is_runtime(ev: OomEvent, since: float | None) -> bool:
    return any(w in ev.where for w in _RUNTIME_WHERE) and since is not None and ev.t_unix_s >= since


def _dedupe(events: list[OomEvent]) -> list[OomEvent]:
    """One event per failure: the engine core and the frontend both report a start-up refusal."""
    out: list[OomEvent] = []
    for ev in events:
        key = _KV_TOO_SMALL.search(ev.message) or _TORCH_OOM.search(ev.message)
        if out and key and (_KV_TOO_SMALL.search(out[-1].message) or _TORCH_OOM.search(out[-1].message)):
            continue
        if out and ev.message == out[-1].message:
            continue
        out.append(ev)
    return out


def _engine_config(session: Session) -> dict[str, Any]:
    df = session.table("engines")
    if df.empty:
        return {}
    row = df.iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _command_setting(session: Session, flag: str) -> str | None:
    """Value of ``--flag`` or ``flag=`` in the recorded command line (for engines that never started)."""
    cmd = session.meta().get("command") or []
    text = " ".join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd)
    m = re.search(rf"(?:--{flag.replace('_', '-')}|{flag})[ =\"':]+(\w[\w.]*)", text)
    return m.group(1) if m else None


def oom_startup(session: Session) -> list[Finding]:
    """The engine could not start for memory: which part did not fit and what would."""
    since = _serving_since(session)
    events = _dedupe([e for e in oom_events(session) if not _is_runtime(e, since)])
    t0 = session_t0(session)
    out = []
    for ev in events:
        m = _KV_TOO_SMALL.search(ev.message)
        if m:
            out.append(_kv_too_small(session, ev, m, t0))
        elif _NO_KV_MEMORY in ev.message:
            out.append(_no_kv_memory(session, ev, t0))
        else:
            out.append(_startup_device_oom(session, ev, t0))
    return out


def _kv_too_small(session: Session, ev: OomEvent, m: re.Match[str], t0: float) -> Finding:
    """vLLM's refusal: one max_model_len request needs more KV than exists; what would fit.

    Worked in tokens and blocks (vLLM prints GiB rounded to 2 decimals, which is 0.0 for small
    models); byte figures are added when the message's are non-zero.
    """
    max_len = int(m["len"])
    need_b, have_b = float(m["need"]) * 2**30, float(m["have"]) * 2**30
    cfg = _engine_config(session)
    mem = startup_row(session) or {}
    bs = int(cfg.get("block_size") or (128 if mem.get("device") == "cpu" else 16))  # vLLM defaults
    est = _ESTIMATED_LEN.search(ev.message)
    if est:
        fits_len = int(est.group(1))
    elif need_b > 0:
        fits_len = int(max_len * have_b / need_b) - bs
    else:
        fits_len = 0
    capacity = fits_len + bs  # tokens the KV cache holds, vLLM's null block included
    have_blocks = capacity // bs
    blocks_needed = math.ceil(max_len / bs) + 1  # vLLM holds one null block back
    known_bytes = need_b > 0 and have_b > 0
    metrics: dict[str, Any] = {"max_model_len": max_len, "largest_max_model_len": fits_len,
                               "blocks_available": have_blocks, "blocks_needed": blocks_needed,
                               "block_size": bs,
                               "kv_needed_bytes": need_b if known_bytes else None,
                               "kv_available_bytes": have_b if known_bytes else None}
    options = [f"--max-model-len {fits_len} (the largest that fits)"] if fits_len > 0 else []
    settings: dict[str, Any] = {"max_model_len": fits_len} if fits_len > 0 else {}
    total, util = mem.get("total_bytes"), cfg.get("gpu_memory_utilization")
    if util is None and mem.get("budget_bytes") and total:
        util = mem["budget_bytes"] / total
    if mem.get("device") == "cuda" and total and util and known_bytes:
        new_util = float(util) + (need_b - have_b) / total
        metrics["gpu_memory_utilization_needed"] = new_util
        if new_util <= th.MAX_GPU_MEMORY_UTILIZATION:
            options.append(f"gpu_memory_utilization {float(util):.2f} → "
                           f"{math.ceil(new_util * 100) / 100:.2f} (+{fmt_bytes(need_b - have_b)})")
        else:
            options.append(f"gpu_memory_utilization would have to be {new_util:.2f} (above "
                           f"{th.MAX_GPU_MEMORY_UTILIZATION:.2f})")
    else:
        more = (f", ≥ {fmt_bytes(need_b / max_len * blocks_needed * bs)} of KV memory" if known_bytes
                else "")
        cpu = " (CPU backend: VLLM_CPU_KVCACHE_SPACE)" if mem.get("device") == "cpu" else ""
        options.append(f"≥ {blocks_needed} KV blocks of {bs} (have {have_blocks}): "
                       f"--num-gpu-blocks-override {blocks_needed}{more}{cpu}")
    dtype = str(cfg.get("kv_cache_dtype") or _command_setting(session, "kv_cache_dtype") or "auto")
    if mem.get("device") == "cpu":  # fp8 KV and tensor parallel are GPU remedies
        dtype = "n/a (CPU)"
    if "fp8" not in dtype and "CPU" not in dtype:
        fp8_len = 2 * capacity - bs
        options.append("--kv-cache-dtype fp8 (half the bytes per token of a 16-bit cache: "
                       + ("fits)" if fp8_len >= max_len else f"still short, max_model_len {fp8_len} would fit)"))
    tp = int(cfg.get("tensor_parallel_size") or 1)
    for k in (2, 4, 8) if mem.get("device") != "cpu" else ():
        if k * capacity - bs >= max_len:
            options.append(f"--tensor-parallel-size {tp * k} (KV per token split over {tp * k} GPUs)")
            break
    bytes_text = (f" ({fmt_bytes(need_b)} of KV needed, {fmt_bytes(have_b)} available)"
                  if known_bytes else "")
    msg = (f"engine refused to start: one max_model_len {max_len:,} request needs {blocks_needed} KV "
           f"blocks of {bs} (with vLLM's null block) but the cache has {have_blocks}, room for "
           f"{fits_len:,} tokens{bytes_text}")
    rel = ev.t_unix_s - t0
    # One recommendation (the first option: what fits without new hardware); the others stay in
    # the metrics for the Simulate page and scripts.
    metrics["other_options"] = options[1:]
    return Finding("OOM_STARTUP", CRITICAL, rel, rel, msg, options[0] if options else None,
                   ev.engine_id, metrics, settings)


def _no_kv_memory(session: Session, ev: OomEvent, t0: float) -> Finding:
    """vLLM's refusal when start-up (weights, activations, ...) left no budget for the KV cache."""
    mem = startup_row(session) or {}
    parts = {k: mem.get(k) for k in ("weights_bytes", "activation_peak_bytes", "non_torch_bytes",
                                      "cuda_graph_bytes")}
    used = sum(v for v in parts.values() if v)
    budget, total = mem.get("budget_bytes"), mem.get("total_bytes")
    metrics: dict[str, Any] = dict(parts) | {"budget_bytes": budget, "total_bytes": total,
                                             "used_before_kv_bytes": used or None}
    settings: dict[str, Any] = {}
    rel = ev.t_unix_s - t0
    if not (used and budget and total):
        return Finding("OOM_STARTUP", CRITICAL, rel, rel,
                       "engine refused to start: no memory left for the KV cache after loading and "
                       "profiling (start-up breakdown not recorded)",
                       "raise gpu_memory_utilization, lower --max-num-batched-tokens, or use more GPUs",
                       ev.engine_id, metrics)
    named = ", ".join(f"{k.removesuffix('_bytes').replace('_', ' ')} {fmt_bytes(v)}"
                      for k, v in parts.items() if v)
    biggest = max((k for k in parts if parts[k]), key=lambda k: parts[k] or 0)
    util_now = budget / total
    floor_util = used / total
    metrics |= {"gpu_memory_utilization": util_now, "gpu_memory_utilization_floor": floor_util}
    msg = (f"engine refused to start: nothing left for the KV cache — {named} use {fmt_bytes(used)} of "
           f"the {fmt_bytes(budget)} budget (gpu_memory_utilization {util_now:.2f} of "
           f"{fmt_bytes(total)}; {fmt_bytes(used - budget)} over)")
    recs = []
    if floor_util < th.MAX_GPU_MEMORY_UTILIZATION:
        # leave the KV cache at least as much as start-up itself needs past the floor, capped
        target = min(math.ceil((floor_util + 0.05) * 100) / 100, th.MAX_GPU_MEMORY_UTILIZATION)
        settings["gpu_memory_utilization"] = target
        recs.append(f"gpu_memory_utilization {util_now:.2f} → ≥ {target:.2f} (start-up alone needs "
                    f"{floor_util:.2f}; every 0.01 above it is {fmt_bytes(total / 100)} of KV cache)")
    if biggest == "activation_peak_bytes":
        recs.append("lower --max-num-batched-tokens (the activation peak scales with it)")
    if biggest == "cuda_graph_bytes":
        recs.append("--enforce-eager or fewer CUDA-graph capture sizes")
    if biggest == "weights_bytes" and floor_util >= th.MAX_GPU_MEMORY_UTILIZATION:
        recs.append("--tensor-parallel-size 2 or a quantized model (the weights alone do not fit)")
    metrics["other_options"] = recs[1:]
    return Finding("OOM_STARTUP", CRITICAL, rel, rel, msg, recs[0] if recs else None, ev.engine_id,
                   metrics, settings)


def _bytes(value: str, unit: str) -> float:
    return float(value) * _UNIT[unit]


def _startup_device_oom(session: Session, ev: OomEvent, t0: float) -> Finding:
    m = _TORCH_OOM.search(ev.message)
    mem = startup_row(session) or {}
    metrics: dict[str, Any] = {"where": ev.where}
    state = ""
    if m:
        req, total, free = _bytes(m["req"], m["req_u"]), _bytes(m["total"], m["total_u"]), _bytes(m["free"], m["free_u"])
        metrics |= {"requested_bytes": req, "total_bytes": total, "free_bytes": free}
        state = f": {fmt_bytes(req)} requested with {fmt_bytes(free)} of {fmt_bytes(total)} free on GPU {m['gpu']}"
    w = ev.where
    if "load_model" in w:
        part, rec = "loading the weights", "--tensor-parallel-size 2 (halves weights per GPU) or a quantized model"
    elif "compile" in w or "warm" in w:
        part = "capturing CUDA graphs" + (f" (estimated {fmt_bytes(mem.get('cuda_graph_bytes'))})"
                                          if mem.get("cuda_graph_bytes") else "")
        rec = "--enforce-eager, or fewer CUDA-graph capture sizes (compilation_config cudagraph_capture_sizes)"
    elif "profiling" in w:
        part = "profiling the activation peak"
        budget = _command_setting(session, "max_num_batched_tokens")
        rec = ("lower --max-num-batched-tokens" + (f" {budget} → {int(budget) // 2}" if budget and budget.isdigit() else "")
               + " (the activation peak scales with it)")
    elif "KV cache" in w:
        part, rec = "allocating the KV cache", "lower gpu_memory_utilization so that other memory fits"
    else:
        part, rec = f"start-up ({w or 'unknown stage'})", "lower gpu_memory_utilization or use more GPUs"
    foreign = _foreign_at_oom(session, ev.message)
    if foreign:
        held = sum(b for _, b in foreign)
        rec = (f"other processes hold {fmt_bytes(held)} of this GPU "
               f"({', '.join(fmt_pid(p) for p, _ in foreign)}): free it before starting the engine")
        metrics["foreign_processes"] = [{"pid": p, "used_bytes": b} for p, b in foreign]
    msg = f"engine ran out of device memory while {part}{state}{_oom_text_details(session, ev.message)}"
    rel = ev.t_unix_s - t0
    return Finding("OOM_STARTUP", CRITICAL, rel, rel, msg, rec, ev.engine_id, metrics)


def oom_runtime(session: Session) -> list[Finding]:
    """CUDA OOM while serving: memory at that moment and what grew before it."""
    since = _serving_since(session)
    t0 = session_t0(session)
    util = _engine_config(session).get("gpu_memory_utilization")
    out = []
    for ev in _dedupe([e for e in oom_events(session) if _is_runtime(e, since)]):
        lo = max(ev.t_unix_s - th.OOM_LOOKBACK_S, since or ev.t_unix_s)
        growth = _growth_before(session, ev, lo)
        foreign = _foreign_at_oom(session, ev.message)
        mem = ev.memory
        total = mem.get("total_bytes")
        m = _TORCH_OOM.search(ev.message)
        state = ", ".join(f"{k.removesuffix('_bytes')} {fmt_bytes(mem[k])}"
                          for k in ("allocated_bytes", "reserved_bytes", "free_bytes", "total_bytes")
                          if mem.get(k) is not None)
        if m:
            state = f"{fmt_bytes(_bytes(m['req'], m['req_u']))} requested; " + state
        causes = {k: v for k, v in growth.items() if k != "allocator allocated" and v and v > 0}
        if foreign:
            causes["other processes"] = max(causes.get("other processes", 0.0), sum(b for _, b in foreign))
        grew_text = ", ".join(f"{k} +{fmt_bytes(v)}" for k, v in sorted(
            ((k, v) for k, v in growth.items() if v and v > 0), key=lambda kv: -kv[1])) or "nothing measured grew"
        window = ev.t_unix_s - lo
        msg = (f"out of device memory while serving ({ev.where}): {state or 'no memory state'}; in the "
               f"{window:.0f} s of serving before it: {grew_text}{_oom_text_details(session, ev.message)}")
        top = max(causes, key=lambda k: causes[k]) if causes else None
        amount = causes.get(top, 0.0) if top else 0.0
        settings: dict[str, Any] = {}
        if top and total and util:
            lowered = math.floor((float(util) - amount / total) * 100) / 100
            if 0 < lowered < float(util):  # else the numbers do not add up: no number to suggest
                settings["gpu_memory_utilization"] = lowered
        lower = (f"lower gpu_memory_utilization {float(util):.2f} → {settings['gpu_memory_utilization']:.2f}"
                 if settings else "lower gpu_memory_utilization")
        if top == "other processes":
            who = ", ".join(f"{fmt_pid(p)} ({fmt_bytes(b)})" for p, b in foreign) or "another process"
            rec = (f"{who} took {fmt_bytes(amount)} of this GPU after the engine sized its memory: "
                   f"{lower} to leave it room (or run it on another GPU)")
        elif top == "non-torch":
            rec = (f"memory outside PyTorch (CUDA context, NCCL, kernels) grew by {fmt_bytes(amount)}: {lower}")
        elif top == "allocator reserved":
            budget = _engine_config(session).get("max_num_batched_tokens")
            rec = (f"PyTorch allocations grew {fmt_bytes(amount)} past what start-up profiled: lower "
                   + (f"--max-num-batched-tokens {int(budget)} → {int(budget) // 2}" if budget else
                      "--max-num-batched-tokens") + f" or --max-num-seqs, or {lower}")
        else:
            rec = f"{lower} to leave headroom, or lower --max-num-batched-tokens"
        rel = ev.t_unix_s - t0
        metrics = {"where": ev.where, **{k: v for k, v in mem.items() if k.endswith("_bytes")},
                   **{f"growth_{k.replace(' ', '_')}_bytes": v for k, v in growth.items()},
                   "foreign_processes": [{"pid": p, "used_bytes": b} for p, b in foreign],
                   "cause": top}
        out.append(Finding("OOM_RUNTIME", CRITICAL, lo - t0, rel, msg, rec, ev.engine_id, metrics,
                           settings))
    return out


def _foreign_at_oom(session: Session, message: str) -> list[tuple[int, float]]:
    """(pid, bytes) of processes outside the session that PyTorch's OOM text lists."""
    own = set(session.table("processes")["pid"].dropna().astype(int))
    return [(int(m["pid"]), _bytes(m["used"], m["unit"])) for m in _TORCH_OOM_PROCESS.finditer(message)
            if int(m["pid"]) not in own]


def _oom_text_details(session: Session, message: str) -> str:
    """Foreign processes and allocator slack named in PyTorch's OOM text ("" when absent)."""
    parts = []
    foreign = _foreign_at_oom(session, message)
    if foreign:
        parts.append("other processes on the GPU: " + ", ".join(f"{fmt_pid(p)} {fmt_bytes(b)}" for p, b in foreign))
    slack = _TORCH_OOM_SLACK.search(message)
    if slack:
        parts.append(f"{fmt_bytes(_bytes(slack['slack'], slack['slack_u']))} reserved by PyTorch but "
                     "unallocated")
    return "; " + "; ".join(parts) if parts else ""


def _delta(df: pd.DataFrame, col: str) -> float | None:
    df = df.dropna(subset=[col]).sort_values("t_unix_s")
    return None if len(df) < 2 else float(df[col].iloc[-1] - df[col].iloc[0])


def _growth_before(session: Session, ev: OomEvent, lo: float) -> dict[str, float | None]:
    """Growth between ``lo`` and the OOM: allocator, this engine's and other processes' NVML use.

    The OOM event's own memory state closes the allocator series (samples may lag the failure).
    """
    hi = ev.t_unix_s
    where = "WHERE t_unix_s BETWEEN ? AND ?"
    alloc = session.table("allocator_samples", where, (lo, hi))
    if ev.pid is not None and not alloc.empty and (alloc["pid"] == ev.pid).any():
        alloc = alloc[alloc["pid"] == ev.pid]
    at_oom = {k: ev.memory.get(k) for k in ("allocated_bytes", "reserved_bytes")}
    if all(v is not None for v in at_oom.values()):
        alloc = pd.concat([alloc, pd.DataFrame([{"t_unix_s": hi, **at_oom}])], ignore_index=True)
    device = ev.memory.get("device_index")
    procs = session.table("gpu_process_samples", where, (lo, hi))
    gpu = session.table("gpu_samples", where, (lo, hi))
    if device is not None:
        procs = procs[procs["device_index"] == device]
        gpu = gpu[gpu["device_index"] == device]
    own = set(session.table("processes")["pid"].dropna().astype(int))
    own_p = procs[procs["pid"].isin(own)]
    foreign = procs[~procs["pid"].isin(own)]
    reserved = _delta(alloc, "reserved_bytes")
    own_used = (_delta(own_p.groupby("t_unix_s", as_index=False)["used_bytes"].sum(), "used_bytes")
                if not own_p.empty else None)
    device_used = _delta(gpu, "used_bytes") if not gpu.empty else None
    if device_used is not None and own_used is not None:
        others = device_used - own_used
    else:
        others = (_delta(foreign.groupby("t_unix_s", as_index=False)["used_bytes"].sum(), "used_bytes")
                  if not foreign.empty else None)
    return {
        "allocator reserved": reserved,
        "allocator allocated": _delta(alloc, "allocated_bytes"),
        "non-torch": own_used - reserved if own_used is not None and reserved is not None else None,
        "other processes": others,
    }


def gpu_memory_pressure(session: Session) -> list[Finding]:
    """NVML used near total, foreign processes on the engine's GPUs, allocator fragmentation."""
    t0 = session_t0(session)
    out: list[Finding] = []
    gpu = session.table("gpu_samples")
    if not gpu.empty:
        for dev, g in gpu.groupby("device_index"):
            frac = g["used_bytes"] / g["total_bytes"]
            high = g[frac >= th.GPU_USED_FRAC]
            share = len(high) / len(g)
            if len(high) >= th.SUSTAINED_MIN_STEPS and share >= th.SUSTAINED_MIN_BUSY_FRAC:
                out.append(Finding(
                    "GPU_MEMORY_PRESSURE", WARNING, float(high["t_unix_s"].min() - t0),
                    float(high["t_unix_s"].max() - t0),
                    f"GPU {dev}: NVML used ≥ {th.GPU_USED_FRAC:.0%} of {fmt_bytes(float(g['total_bytes'].max()))} in "
                    f"{share:.0%} of samples (peak {fmt_bytes(float(g['used_bytes'].max()))})",
                    "leave headroom: lower gpu_memory_utilization or move other work off this GPU",
                    None, {"device_index": int(dev), "high_share": share,
                           "peak_used_bytes": float(g["used_bytes"].max())}))
    out.extend(_foreign_processes(session, t0))
    out.extend(_fragmentation(session, t0))
    return out


def _foreign_processes(session: Session, t0: float) -> list[Finding]:
    procs = session.table("gpu_process_samples")
    if procs.empty:
        return []
    own = set(session.table("processes")["pid"].dropna().astype(int))
    engine_gpus = set(procs.loc[procs["pid"].isin(own), "device_index"])
    foreign = procs[~procs["pid"].isin(own) & procs["device_index"].isin(engine_gpus)]
    out = []
    for (dev, pid), g in foreign.groupby(["device_index", "pid"]):
        peak = g["used_bytes"].max()
        if pd.isna(peak) or peak < th.FOREIGN_PROCESS_MIN_BYTES:
            continue
        out.append(Finding(
            "GPU_MEMORY_PRESSURE", WARNING, float(g["t_unix_s"].min() - t0), float(g["t_unix_s"].max() - t0),
            f"GPU {int(dev)}: process {int(pid)} outside this session used up to {fmt_bytes(float(peak))} "
            "on the engine's GPU",
            f"move {fmt_pid(pid)} to another GPU or lower gpu_memory_utilization by "
            f"≥ {fmt_bytes(float(peak))} of the device", None,
            {"device_index": int(dev), "pid": int(pid), "peak_used_bytes": float(peak)}))
    return out


def _fragmentation(session: Session, t0: float) -> list[Finding]:
    alloc = session.table("allocator_samples")
    if alloc.empty:
        return []
    out = []
    for pid, a in alloc.groupby("pid"):
        a = a.dropna(subset=["reserved_bytes", "allocated_bytes"]).sort_values("t_unix_s")
        if a.empty:
            continue
        slack = a["reserved_bytes"] - a["allocated_bytes"]
        frag = a[(slack >= th.FRAGMENTATION_MIN_BYTES) & (slack >= th.FRAGMENTATION_FRAC * a["reserved_bytes"])]
        retries = a["alloc_retries"].dropna()
        grew_retries = int(retries.iloc[-1] - retries.iloc[0]) if len(retries) >= 2 else 0
        share = len(frag) / len(a)
        if not ((len(frag) >= th.SUSTAINED_MIN_STEPS and share >= th.SUSTAINED_MIN_BUSY_FRAC) or grew_retries > 0):
            continue
        worst = float(slack.max())
        rng = frag if not frag.empty else a
        out.append(Finding(
            "GPU_MEMORY_PRESSURE", WARNING, float(rng["t_unix_s"].min() - t0), float(rng["t_unix_s"].max() - t0),
            f"worker {int(pid)}: allocator fragmentation — reserved exceeded allocated by up to {fmt_bytes(worst)} "
            f"({share:.0%} of samples), {grew_retries} cudaMalloc retries",
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (lets the allocator reuse freed segments)",
            None, {"pid": int(pid), "max_slack_bytes": worst, "frag_share": share,
                   "alloc_retries": grew_retries}))
    return out


def session_rules(session: Session) -> list[Finding]:
    """Every session-wide memory rule."""
    return oom_startup(session) + oom_runtime(session) + gpu_memory_pressure(session)
