"""``kvscope report``: the session's key numbers as the documented JSON object or a short text.

Every number comes from the session; what the session did not measure is None (``null``).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from profiler.reader import Session

REPORT_VERSION = 1


def _num(value: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, NaN to None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _pct(series: pd.Series, q: float) -> float | None:
    s = series.dropna()
    return None if s.empty else float(s.quantile(q))


def session_bounds(session: Session) -> tuple[float | None, float | None]:
    """(start, last sample) in unix seconds over every timed table."""
    meta = session.meta()
    starts, ends = [], []
    for table, col in (
        ("steps", "t_unix_s"), ("events", "t_unix_s"), ("gpu_samples", "t_unix_s"),
        ("allocator_samples", "t_unix_s"), ("requests", "t_finished_unix_s"),
        ("startup_memory", "t_unix_s"),
    ):
        row = session.conn.execute(f"SELECT MIN({col}), MAX({col}) FROM {table}").fetchone()
        if row[0] is not None:
            starts.append(row[0])
            ends.append(row[1])
    start = meta.get("started_unix_s") or (min(starts) if starts else None)
    end = max(ends) if ends else None
    return start, end


_STEP_TOTALS = """
SELECT COUNT(running), SUM(preemptions), SUM(prefix_queries_tokens), SUM(prefix_hits_tokens),
       SUM(preempted_prefix_queries_tokens), SUM(preempted_prefix_hits_tokens),
       MAX(CASE WHEN running IS NOT NULL THEN kv_usage_frac END),
       AVG(CASE WHEN running IS NOT NULL THEN kv_usage_frac END), SUM(finished)
FROM steps
"""
"""One scan of ``steps`` in SQLite: a 1M-step session never has to become a DataFrame here."""


def build_report(session: Session, findings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``kvscope report --json`` object (see README / issue spec for the key list)."""
    meta = session.meta()
    engines = session.table("engines")
    requests = session.table("requests")
    start, end = session_bounds(session)
    eng = engines.iloc[0] if not engines.empty else None
    steps_n, pre, pq, ph, ppq, pph, kv_peak, kv_mean, finished = session.rows(_STEP_TOTALS)[0]
    startup = session.table("startup_memory")
    mem = startup.iloc[0] if not startup.empty else None
    engine = {
        k: (_num(eng[k]) if eng is not None else None)
        for k in ("block_size", "num_gpu_blocks", "enable_prefix_caching", "max_num_seqs",
                  "max_model_len", "gpu_memory_utilization")
    }
    if engine["enable_prefix_caching"] is not None:
        engine["enable_prefix_caching"] = bool(engine["enable_prefix_caching"])
    return {
        "kvscope_report": REPORT_VERSION,
        "session": {
            "path": str(session.path),
            "vllm_version": meta.get("vllm_version") or (_num(eng["vllm_version"]) if eng is not None else None),
            "model": meta.get("model") or (_num(eng["model"]) if eng is not None else None),
            "started_unix_s": _num(start),
            "duration_s": _num(end - start) if start is not None and end is not None else None,
            "complete": meta.get("ended_unix_s") is not None and not meta.get("incomplete_reason"),
        },
        "engine": engine,
        "engines": int(len(engines)),
        "steps": int(steps_n),
        "preemptions": pre,
        "requests_finished": int(len(requests)) if not requests.empty or finished is None else int(finished),
        "prefix_cache": {
            "queries_tokens": pq,
            "hits_tokens": ph,
            "hit_rate": (ph / pq) if pq else None,
            "preempted_queries_tokens": ppq,
            "preempted_hits_tokens": pph,
        },
        "kv_cache": {"peak_usage_frac": kv_peak, "mean_usage_frac": kv_mean},
        "memory": {
            k: (_num(mem[k]) if mem is not None else None)
            for k in ("weights_bytes", "kv_cache_bytes", "activation_peak_bytes",
                      "non_torch_bytes", "cuda_graph_bytes")
        },
        "gpus": _gpus(session),
        "latency_s": {
            f"{name}_p{int(q * 100)}": _pct(requests[col], q) if not requests.empty else None
            for name, col in (("ttft", "ttft_s"), ("e2e", "e2e_s"))
            for q in (0.5, 0.95, 0.99)
        },
        "events": _event_counts(session),
        "findings": findings or [],
    }


def _gpus(session: Session) -> list[dict[str, Any]]:
    gpus = session.table("gpus").drop_duplicates("device_index")
    out = []
    for _, g in gpus.iterrows():
        peak = session.scalar(
            "SELECT MAX(used_bytes) FROM gpu_samples WHERE device_index = ?", (int(g["device_index"]),)
        )
        out.append({"index": int(g["device_index"]), "name": g["name"],
                    "total_bytes": _num(g["total_bytes"]), "peak_used_bytes": _num(peak)})
    return out


def _event_counts(session: Session) -> dict[str, int]:
    rows = session.conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall()
    return {k: int(n) for k, n in rows}


def _gib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def format_text(report: dict[str, Any]) -> str:
    """Human summary of a report dict."""
    s, e, pc, kv = report["session"], report["engine"], report["prefix_cache"], report["kv_cache"]
    lines = [
        f"session   {s['path']}  ({'complete' if s['complete'] else 'INCOMPLETE: recording was cut off'})",
        f"vLLM      {s['vllm_version']}   model {s['model']}",
        f"duration  {_fmt(s['duration_s'], '{:.1f} s')}   steps {report['steps']}   "
        f"requests finished {report['requests_finished']}",
        f"KV cache  {e['num_gpu_blocks']} blocks x {e['block_size']} tokens   "
        f"peak {_fmt(kv['peak_usage_frac'], '{:.0%}')}  mean {_fmt(kv['mean_usage_frac'], '{:.0%}')}",
        f"preempt   {report['preemptions']}",
        f"prefix    hit rate {_fmt(pc['hit_rate'], '{:.1%}')} "
        f"({pc['hits_tokens']} of {pc['queries_tokens']} tokens)",
    ]
    m = report["memory"]
    if any(v is not None for v in m.values()):
        lines.append(
            f"memory    weights {_gib(m['weights_bytes'])}, KV {_gib(m['kv_cache_bytes'])}, "
            f"activations {_gib(m['activation_peak_bytes'])}, non-torch {_gib(m['non_torch_bytes'])}, "
            f"CUDA graphs {_gib(m['cuda_graph_bytes'])}"
        )
    for g in report["gpus"]:
        lines.append(f"GPU {g['index']}     {g['name']}: peak {_gib(g['peak_used_bytes'])} of {_gib(g['total_bytes'])}")
    lat = report["latency_s"]
    lines.append(
        f"latency   TTFT p50/p95/p99 {_fmt(lat['ttft_p50'], '{:.3f}')}/{_fmt(lat['ttft_p95'], '{:.3f}')}/"
        f"{_fmt(lat['ttft_p99'], '{:.3f}')} s   e2e p50/p95/p99 {_fmt(lat['e2e_p50'], '{:.3f}')}/"
        f"{_fmt(lat['e2e_p95'], '{:.3f}')}/{_fmt(lat['e2e_p99'], '{:.3f}')} s"
    )
    if report["events"]:
        lines.append("events    " + ", ".join(f"{k} {n}" for k, n in sorted(report["events"].items())))
    for f in report["findings"]:
        lines.append(f"[{f['severity'].upper()}] {f['code']}: {f['message']}")
        if f.get("recommendation"):
            lines.append(f"    -> {f['recommendation']}")
    return "\n".join(lines)


def _fmt(value: Any, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)
