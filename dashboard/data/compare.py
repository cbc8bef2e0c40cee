"""Two sessions side by side: aligned series and the deltas of their key numbers and settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from dashboard.data import derive
from dashboard.data.steps import View
from profiler.units import gib, is_number

KEY_NUMBERS: tuple[tuple[str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("duration (s)", lambda r: r["session"]["duration_s"], "lower"),
    ("engine steps", lambda r: r["steps"], ""),
    ("requests finished", lambda r: r["requests_finished"], "higher"),
    ("KV blocks", lambda r: r["engine"]["num_gpu_blocks"], ""),
    ("gpu_memory_utilization", lambda r: r["engine"]["gpu_memory_utilization"], ""),
    ("prefix caching", lambda r: r["engine"]["enable_prefix_caching"], ""),
    ("peak KV usage", lambda r: r["kv_cache"]["peak_usage_frac"], ""),
    ("mean KV usage", lambda r: r["kv_cache"]["mean_usage_frac"], ""),
    ("preemptions", lambda r: r["preemptions"], "lower"),
    ("prefix hit rate", lambda r: r["prefix_cache"]["hit_rate"], "higher"),
    ("TTFT p50 (s)", lambda r: r["latency_s"]["ttft_p50"], "lower"),
    ("TTFT p95 (s)", lambda r: r["latency_s"]["ttft_p95"], "lower"),
    ("e2e p50 (s)", lambda r: r["latency_s"]["e2e_p50"], "lower"),
    ("e2e p95 (s)", lambda r: r["latency_s"]["e2e_p95"], "lower"),
    ("KV cache (GiB)", lambda r: gib(r["memory"]["kv_cache_bytes"]), ""),
    ("peak GPU memory (GiB)", lambda r: gib(max((g["peak_used_bytes"] or 0) for g in r["gpus"]))
     if r["gpus"] else None, "lower"),
)
"""(label, getter on a build_report dict, which direction is better)."""


LATENCY_KEYS = {"TTFT p50 (s)": "ttft_p50", "TTFT p95 (s)": "ttft_p95", "e2e p50 (s)": "e2e_p50",
                "e2e p95 (s)": "e2e_p95"}
"""Key numbers that are latency percentiles (``latency_s`` keys): from an attach session they are
known only to their histogram bucket, which the table states."""


def key_number_deltas(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """One row per key number: A, B, B − A, relative change, whether B is better/worse, and for
    latencies from server histograms the bucket each lies in (no verdict when both share it)."""
    rows = []
    for label, get, better in KEY_NUMBERS:
        va, vb = _safe(get, a), _safe(get, b)
        if isinstance(va, bool) or isinstance(vb, bool):
            va, vb = (None if va is None else float(va)), (None if vb is None else float(vb))
        delta = vb - va if is_number(va) and is_number(vb) else None
        rel = (delta / va) if delta is not None and va not in (0, None) else None
        verdict = ""
        ba, bb = _bucket(a, label), _bucket(b, label)
        if delta and better and not (ba is not None and ba == bb):
            verdict = "better" if (delta < 0) == (better == "lower") else "worse"
        resolution = " · ".join(f"{who}: bucket {_bucket_text(x)}" for who, x in (("A", ba), ("B", bb))
                                if x is not None)
        rows.append({"metric": label, "A": va, "B": vb, "B − A": delta, "change": rel, "B is": verdict,
                     "resolution": resolution})
    return pd.DataFrame(rows)


def _bucket(r: dict[str, Any], label: str) -> tuple[float, float | None] | None:
    """The histogram bucket of a latency key number (None: measured per request, or not one)."""
    key = LATENCY_KEYS.get(label)
    res = _safe(lambda x: (x["latency_s"].get("resolution_s") or {}).get(key), r) if key else None
    return (res[0], res[1]) if isinstance(res, list | tuple) and len(res) == 2 else None


def _bucket_text(b: tuple[float, float | None]) -> str:
    return f"≥ {b[0]:g} s" if b[1] is None else f"{b[0]:g}–{b[1]:g} s"


def _safe(get: Callable[[dict[str, Any]], Any], r: dict[str, Any]) -> Any:
    try:
        return get(r)
    except (KeyError, TypeError, ValueError):
        return None



def config_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Engine settings (first engine of each) that differ between the two sessions."""
    if a.empty or b.empty:
        return pd.DataFrame(columns=["setting", "A", "B"])
    ra, rb = a.iloc[0], b.iloc[0]
    skip = {"engine_id", "pid", "created_unix_s", "label"}
    rows = [{"setting": c, "A": str(ra[c]), "B": str(rb[c])} for c in a.columns
            if c in rb and c not in skip and str(ra[c]) != str(rb[c])]
    return pd.DataFrame(rows, columns=["setting", "A", "B"])


def aligned_series(buckets: pd.DataFrame, view: View, first_step_s: float, label: str,
                   rolling_s: float) -> dict[str, pd.DataFrame]:
    """A session's series with time measured from its first engine step, tagged with ``label``."""
    out: dict[str, pd.DataFrame] = {}
    kv = derive.kv_series(buckets).rename(columns={"value": "kv_usage_frac"})
    q = derive.queue_series(buckets)
    waiting = q[q["state"] == "waiting"].rename(columns={"value": "waiting"})
    running = q[q["state"] == "running"].rename(columns={"value": "running"})
    rates = derive.rate_series(buckets, view, {"generation_tokens": "generation"})
    hits = derive.hit_rate_series(buckets, view, rolling_s)
    hits = hits[hits["series"].str.startswith("rolling")] if not hits.empty else hits
    for name, df in (("kv", kv), ("waiting", waiting), ("running", running), ("generation", rates),
                     ("hit_rate", hits)):
        df = df.copy()
        df["t_s"] = df["t_s"] - first_step_s
        df["session"] = label
        out[name] = df
    return out
