"""Block residency: how long KV blocks live, idle and wait between reuses, vLLM's view vs kvscope's.

vLLM (``--kv-cache-metrics``) samples a fraction of blocks at allocation and, when one is taken
from the free pool again (a cached prefix block evicted, or any other block reused), reports its
lifetime (allocated to reallocated), idle time before that and the gaps between its last few
accesses. A recorded session keeps every sampled eviction (``kv_evictions``, from
``SchedulerStats.kv_cache_eviction_events``); an attach session keeps the three Prometheus
histograms (``kv_residency_hist``).

kvscope's own model of the same cache: KV events give every eviction and, per evicted block, the
time since its hash was (last) stored (its residency); the prompt-block hashes give, per block that
a later request reused, the time since the previous request that used it, both taken when the
request was scheduled (the reuse gaps the LRU replay of the what-if orders by distance).
``residency_check`` puts the two side by side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis.preemption import request_key
from profiler.session.reader import Session

METRICS = ("lifetime", "idle_before_evict", "reuse_gap")


@dataclass(frozen=True)
class Distribution:
    """A residency time distribution, from samples or from a cumulative histogram."""

    count: int
    mean_s: float | None
    p50_s: float | None
    samples_s: np.ndarray | None = None
    """The samples themselves when known (recorded sessions), else None (histograms)."""


def _from_samples(values: np.ndarray) -> Distribution:
    v = values[np.isfinite(values)]
    if not len(v):
        return Distribution(0, None, None, v)
    return Distribution(len(v), float(v.mean()), float(np.median(v)), v)


def _from_histogram(buckets: dict[str, float]) -> Distribution | None:
    count, total = buckets.get("count"), buckets.get("sum")
    if not count:
        return None
    bounds = sorted((math.inf if le == "+Inf" else float(le), v) for le, v in buckets.items()
                    if le not in ("count", "sum") and _is_bound(le))
    p50 = None
    prev_le, prev_n = 0.0, 0.0
    for le, n in bounds:  # linear interpolation inside the bucket holding the median
        if n >= count / 2:
            if math.isinf(le):
                p50 = prev_le
            else:
                frac = (count / 2 - prev_n) / (n - prev_n) if n > prev_n else 1.0
                p50 = prev_le + frac * (le - prev_le)
            break
        prev_le, prev_n = (le if not math.isinf(le) else prev_le), n
    return Distribution(int(count), total / count if total is not None else None, p50)


def _is_bound(le: str) -> bool:
    try:
        float(le)
    except ValueError:
        return False
    return True


def vllm_residency(session: Session, engine_id: int | None = None) -> dict[str, Distribution]:
    """vLLM's residency distributions: recorded evictions, else the scraped histograms' increase."""
    out: dict[str, Distribution] = {}
    where, params = ("WHERE engine_id = ?", (engine_id,)) if engine_id is not None else ("", ())
    ev = session.table("kv_evictions", where, params)
    if not ev.empty:
        out["lifetime"] = _from_samples(ev["lifetime_s"].to_numpy(dtype=float))
        out["idle_before_evict"] = _from_samples(ev["idle_s"].to_numpy(dtype=float))
        gaps: list[float] = []
        for raw in ev["reuse_gaps_json"].dropna():
            try:
                gaps.extend(float(g) for g in json.loads(raw) if isinstance(g, int | float))
            except (ValueError, TypeError):
                continue
        out["reuse_gap"] = _from_samples(np.asarray(gaps, dtype=float))
        return out
    hist = session.table("kv_residency_hist", where + (" AND" if where else "WHERE")
                         + " metric IS NOT NULL ORDER BY t_unix_s, rowid", params)
    for metric, rows in hist.groupby("metric"):
        times = rows["t_unix_s"]
        at_first, at_last = rows[times == times.min()], rows[times == times.max()]
        first = dict(zip(at_first["le"], at_first["cum_value"], strict=True))
        last = dict(zip(at_last["le"], at_last["cum_value"], strict=True))
        if times.nunique() > 1 and last.get("count", 0) >= first.get("count", 0):
            delta = {k: v - first.get(k, 0.0) for k, v in last.items()}
        else:
            delta = last
        d = _from_histogram(delta)
        if d is not None:
            out[str(metric)] = d
    return out


def model_residency(session: Session, engine_id: int | None = None) -> dict[str, Distribution]:
    """kvscope's model of the same quantities: KV-event residency and prompt-block reuse gaps."""
    out: dict[str, Distribution] = {}
    where = "WHERE (medium IS NULL OR medium = 'GPU')" + (" AND engine_id = ?" if engine_id is not None else "")
    params = (engine_id,) if engine_id is not None else ()
    ev = session.table("kv_events", where + " ORDER BY engine_id, t_unix_s, seq, rowid", params)
    lives: list[tuple[int, float, float]] = []  # (vLLM hash, stored, removed)
    if not ev.empty:
        stored_at: dict[int, float] = {}
        for t, kind, h in zip(ev["t_unix_s"], ev["kind"], ev["block_hash"], strict=True):
            if kind == "stored" and h is not None and not pd.isna(h):
                stored_at.setdefault(int(h), float(t))
            elif kind == "removed" and h is not None and not pd.isna(h):
                t0 = stored_at.pop(int(h), None)
                if t0 is not None:
                    lives.append((int(h), t0, float(t)))
            elif kind == "cleared":
                stored_at.clear()
        out["lifetime"] = _from_samples(np.asarray([b - a for _, a, b in lives], dtype=float))
    uses = _prompt_block_uses(session, engine_id)
    if uses:
        gaps = [b - a for times in uses.values() for a, b in zip(times, times[1:], strict=False)]
        out["reuse_gap"] = _from_samples(np.asarray(gaps, dtype=float))
    return out


def _prompt_block_uses(session: Session, engine_id: int | None) -> dict[int, list[float]]:
    """Per prompt-block hash (kvscope's): when requests using it were scheduled (arrival +
    queueing) and when a preempted one resumed (its ``preemptions`` resume rows), sorted.

    kvscope's hashes and vLLM's (KV events) name blocks differently, so the two cannot be joined
    block by block: the model's gaps cover every reused prompt block, vLLM's the sampled blocks
    that were reallocated."""
    where, params = ("WHERE engine_id = ?", (engine_id,)) if engine_id is not None else ("", ())
    pb = session.table("prompt_blocks", where, params)
    if pb.empty:
        return {}
    reqs = session.table("requests", where, params).drop_duplicates("request_id")
    sched = reqs["t_finished_unix_s"] - reqs["e2e_s"] + reqs["queued_s"].fillna(0.0)
    sched.index = reqs["request_id"].astype(str)
    rid = pb["request_id"].astype(str)
    at = rid.map(sched).fillna(request_key(rid).map(sched)).fillna(pb["t_unix_s"])
    resumes = session.table("preemptions", "WHERE event = 'resumed'" + (
        " AND engine_id = ?" if engine_id is not None else ""), params)
    again = resumes.groupby(resumes["request_id"].astype(str))["t_unix_s"].apply(list).to_dict()
    uses: dict[int, list[float]] = {}
    for r, t, raw in zip(rid, at.to_numpy(dtype=float), pb["block_hashes"], strict=True):
        for h in np.frombuffer(raw or b"", dtype="<i8").tolist():
            uses.setdefault(h, []).extend([float(t), *again.get(r, ())])
    for times in uses.values():
        times.sort()
    return uses


def sample_rate(session: Session) -> float | None:
    """vLLM's residency sampling fraction when the session knows it (the recorder's event)."""
    for raw in session.table("events", "WHERE kind = 'kv_cache_metrics'")["details_json"].dropna():
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        v = d.get("sample") if isinstance(d, dict) else None
        if isinstance(v, int | float) and 0 < v <= 1:
            return float(v)
    return None


def residency_check(session: Session, engine_id: int | None = None) -> list[dict[str, Any]]:
    """vLLM's residency numbers next to kvscope's model, one row per quantity (None: not known).

    Rows: evictions (vLLM's sampled count scaled by the sampling fraction vs KV-event evictions),
    lifetime mean and median, reuse gap median.
    """
    v = vllm_residency(session, engine_id)
    m = model_residency(session, engine_id)
    rate = sample_rate(session)
    where = "WHERE kind = 'removed' AND (medium IS NULL OR medium = 'GPU')"
    evicted = session.scalar(f"SELECT COUNT(*) FROM kv_events {where}") if session.has_table(
        "kv_events") else None
    life_v, life_m = v.get("lifetime"), m.get("lifetime")
    gap_v, gap_m = v.get("reuse_gap"), m.get("reuse_gap")
    return [
        {"quantity": "evictions", "vllm": (life_v.count / rate if life_v and rate else None),
         "kvscope": int(evicted) if evicted else None,
         "how": "vLLM: sampled blocks reallocated (cached or not) / sampling fraction; kvscope: "
                "cached blocks evicted (KV-event BlockRemoved), at most vLLM's"},
        {"quantity": "lifetime mean (s)", "vllm": life_v.mean_s if life_v else None,
         "kvscope": life_m.mean_s if life_m else None,
         "how": "vLLM: allocation to reallocation of any sampled block; kvscope: a cached "
                "block's hash stored to removed (KV events)"},
        {"quantity": "lifetime median (s)", "vllm": life_v.p50_s if life_v else None,
         "kvscope": life_m.p50_s if life_m else None, "how": "same"},
        {"quantity": "idle before eviction median (s)",
         "vllm": v["idle_before_evict"].p50_s if "idle_before_evict" in v else None,
         "kvscope": None, "how": "hits are not KV events: kvscope cannot see accesses"},
        {"quantity": "reuse gap median (s)", "vllm": gap_v.p50_s if gap_v else None,
         "kvscope": gap_m.p50_s if gap_m else None,
         "how": "vLLM: between the last accesses of each sampled block reallocated; kvscope: "
                "between schedulings and resumes of requests using each prompt block"},
    ]
