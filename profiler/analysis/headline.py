"""One line on what happened in a session, from its report and findings.

The same line heads the text report, names the session in the dashboard's picker and its Sessions
page, so a user sees the same story wherever they look.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from profiler.units import fmt_bytes, fmt_pct, fmt_pid, fmt_s, is_number

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def worst_finding(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most severe finding (the earliest among equals); None when there are none."""
    if not findings:
        return None
    return min(findings, key=lambda f: (SEVERITY_ORDER.get(str(f.get("severity")), 3),
                                        f.get("t_start_s") if is_number(f.get("t_start_s")) else 1e300))


def _m(f: dict[str, Any], key: str) -> Any:
    return (f.get("metrics") or {}).get(key)


def finding_phrase(f: dict[str, Any]) -> str:
    """A few words naming what a finding found, with its key number."""
    code = str(f.get("code"))
    if code == "OOM_STARTUP":
        return "out of memory at start-up"
    if code == "OOM_RUNTIME":
        t = f.get("t_end_s")
        when = f" at {t:.1f} s" if is_number(t) else ""
        foreign = _m(f, "foreign_processes") or []
        if _m(f, "cause") == "other processes" and foreign:
            who = ", ".join(fmt_pid(p.get("pid")) for p in foreign if isinstance(p, dict))
            return f"out of memory while serving{when}: {who} took the headroom"
        return f"out of memory while serving{when}"
    if code == "GPU_MEMORY_PRESSURE":
        if _m(f, "max_slack_bytes") is not None:
            return f"allocator fragmentation, up to {fmt_bytes(_m(f, 'max_slack_bytes'))} reserved but unused"
        if _m(f, "pid") is not None:
            return f"{fmt_pid(_m(f, 'pid'))} used {fmt_bytes(_m(f, 'peak_used_bytes'))} of the engine's GPU"
        return f"GPU {_m(f, 'device_index')} memory nearly full"
    if code == "KV_SATURATION":
        return f"KV cache full with requests waiting for {fmt_pct(_m(f, 'busy_frac'), 0)} of busy time"
    if code == "PREEMPTION_STORM":
        n = _m(f, "preemptions")
        return f"{int(n):,} preemptions" if is_number(n) else "preemption storm"
    if code == "PREFIX_THRASH":
        measured, best = _m(f, "measured_hit_rate"), _m(f, "max_hit_rate")
        if is_number(measured) and is_number(best):
            return f"prefix cache thrashing: hit rate {fmt_pct(measured)} of {fmt_pct(best)} possible"
        return "prefix cache thrashing (evicted prefixes re-stored)"
    if code == "QUEUEING":
        limit = _m(f, "limit") or "the scheduler"
        return f"requests queued at {limit} with KV to spare"
    if code == "KV_OVERPROVISIONED":
        return f"KV cache mostly idle (peak {fmt_pct(_m(f, 'peak_kv_usage_frac'), 0)})"
    message = str(f.get("message") or "").split(":")[0]
    return f"{code}: {message}" if message else code


def _served(report: dict[str, Any]) -> str:
    s = report["session"]
    model = s.get("model")
    name = PurePath(str(model)).name if model else None
    n = report.get("requests_finished") or 0
    dur = fmt_s(s.get("duration_s"))
    if report.get("engines", 0) == 0 and not report.get("steps"):
        if "oom" in (report.get("events") or {}):
            return f"{name or 'the engine'} never started"
        gpus = report.get("gpus") or []
        where = f" on {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}" if gpus else ""
        return f"no vLLM engine: a process recorded for {dur}{where}"
    if not report.get("steps"):
        return f"{name or 'the engine'} started, no step completed"
    return f"{name or 'the engine'} served {n:,} request{'s' if n != 1 else ''} in {dur}"


def headline(report: dict[str, Any]) -> str:
    """One line on what happened: what ran, and its worst finding (or that nothing was found)."""
    findings = report.get("findings") or []
    worst = worst_finding(findings)
    served = _served(report)
    if worst is None:
        return f"{served}; no problems found"
    more = len(findings) - 1
    return f"{served}; {finding_phrase(worst)}" + (f" (+{more} more finding{'s' if more != 1 else ''})"
                                                   if more > 0 else "")


def parallelism_text(engine: dict[str, Any], workers: int | None) -> str:
    """``TP=2, 2 workers`` (DP and PP named when above 1); n/a without an engine."""
    tp = engine.get("tensor_parallel_size")
    if not is_number(tp):
        return "n/a"
    parts = [f"TP={int(tp)}"]
    for key, name in (("pipeline_parallel_size", "PP"), ("data_parallel_size", "DP")):
        v = engine.get(key)
        if is_number(v) and int(v) > 1:
            parts.append(f"{name}={int(v)}")
    if workers:
        parts.append(f"{workers} worker{'s' if workers != 1 else ''}")
    return ", ".join(parts)
