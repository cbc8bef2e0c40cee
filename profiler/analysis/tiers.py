"""KV cache tiers: the GPU prefix cache and every tier behind it (CPU offload, disk, LMCache, ...).

The GPU entry comes from the steps (vLLM's prefix cache: queries, hits, block usage); the others
from ``tier_samples`` (recorded per step from ``SchedulerStats.kv_connector_stats`` /
``connector_prefix_cache_stats``, or scraped from /metrics). A tier's queries are the tokens the
GPU cache missed and the connector looked up; bandwidths are bytes over the transfer time vLLM
measured. What a source did not report is None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.session.reader import Session

TIER_ORDER = ("GPU", "CPU", "DISK", "P2P", "LMCache")
"""Nearest first; other media follow in name order."""

KEYS = ("medium", "queries_tokens", "hits_tokens", "hit_rate", "stored_bytes", "loaded_bytes",
        "load_bytes_per_s", "store_bytes_per_s", "peak_usage_frac")
"""The keys of each ``kv_tiers`` entry of ``kvscope report --json``."""


def _sum(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.sum()) if len(v) else None


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _rate(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _order(medium: str) -> tuple[int, str]:
    return (TIER_ORDER.index(medium) if medium in TIER_ORDER else len(TIER_ORDER), medium)


def tier_samples(session: Session) -> pd.DataFrame:
    """Every ``tier_samples`` row in time order (empty for sessions without tiers)."""
    return session.table("tier_samples", "ORDER BY t_unix_s, rowid")


def kv_tiers(session: Session, gpu: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The report's ``kv_tiers`` list: GPU first, then each recorded tier (``KEYS``).

    ``gpu`` is the report's own ``prefix_cache`` / ``kv_cache`` numbers, so the GPU entry reads
    the same values as the rest of the report.
    """
    if gpu is None:
        q, h, peak = session.rows("SELECT SUM(prefix_queries_tokens), SUM(prefix_hits_tokens), "
                                  "MAX(CASE WHEN running IS NOT NULL THEN kv_usage_frac END) "
                                  "FROM steps")[0]
        gpu = {"queries_tokens": q, "hits_tokens": h, "peak_usage_frac": peak}
    q, h = gpu.get("queries_tokens"), gpu.get("hits_tokens")
    rate = h / q if q and h is not None and h <= q else None
    out = [{"medium": "GPU", "queries_tokens": q, "hits_tokens": h, "hit_rate": rate,
            "stored_bytes": None, "loaded_bytes": None, "load_bytes_per_s": None,
            "store_bytes_per_s": None, "peak_usage_frac": gpu.get("peak_usage_frac")}]
    df = tier_samples(session)
    if df.empty:
        return out
    for medium in sorted(df["medium"].dropna().unique(), key=_order):
        if medium == "GPU":
            continue
        t = df[df["medium"] == medium]
        tq, th_ = _sum(t["queries_tokens"]), _sum(t["hits_tokens"])
        stored, loaded = _sum(t["stored_bytes"]), _sum(t["loaded_bytes"])
        store_s, load_s = _sum(t["store_s"]), _sum(t["load_s"])
        usage = pd.to_numeric(t["usage_frac"], errors="coerce").dropna()
        out.append({
            "medium": str(medium), "queries_tokens": _int(tq), "hits_tokens": _int(th_),
            "hit_rate": th_ / tq if tq and th_ is not None and th_ <= tq else None,
            "stored_bytes": _int(stored), "loaded_bytes": _int(loaded),
            "load_bytes_per_s": _rate(loaded, load_s) if loaded else None,
            "store_bytes_per_s": _rate(stored, store_s) if stored else None,
            "peak_usage_frac": float(usage.max()) if len(usage) else None,
        })
    return out


def capacity_bytes(session: Session, medium: str) -> int | None:
    """Bytes a tier was given (the recorder's ``kv_connector`` event), None when unknown."""
    for raw in session.table("events", "WHERE kind = 'kv_connector'")["details_json"].dropna():
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("medium") == medium and d.get("capacity_bytes"):
            return int(d["capacity_bytes"])
    return None


def tier_hit_tokens(session: Session, engine_id: int | None = None) -> int:
    """Prompt tokens the tiers behind the GPU supplied (their hits), 0 without tiers."""
    where = "WHERE medium != 'GPU'" + (" AND engine_id = ?" if engine_id is not None else "")
    v = session.scalar(f"SELECT SUM(hits_tokens) FROM tier_samples {where}",
                       (engine_id,) if engine_id is not None else ())
    return int(v or 0)


@dataclass(frozen=True)
class TierSeries:
    """A tier's numbers over time, bucketed for charts."""

    medium: str
    frame: pd.DataFrame
    """``t_s`` (bucket start, from session start), ``hit_rate``, ``store_bytes_per_s``,
    ``load_bytes_per_s`` (bytes moved per second of wall time), ``usage_frac``."""


def tier_series(session: Session, t0_unix_s: float, bucket_s: float | None = None
                ) -> list[TierSeries]:
    """Per tier: hit rate, transfer bandwidth and usage over time (one row per bucket)."""
    df = tier_samples(session)
    out: list[TierSeries] = []
    if df.empty:
        return out
    t = df["t_unix_s"].to_numpy(dtype=float) - t0_unix_s
    span = float(np.nanmax(t) - np.nanmin(t)) if len(t) else 0.0
    bucket = bucket_s or max(span / 100.0, 0.25)
    df = df.assign(bucket=np.floor((t - np.nanmin(t)) / bucket) * bucket + np.nanmin(t))
    for medium in sorted(df["medium"].dropna().unique(), key=_order):
        g = df[df["medium"] == medium].groupby("bucket")
        frame = pd.DataFrame({
            "queries_tokens": g["queries_tokens"].sum(min_count=1),
            "hits_tokens": g["hits_tokens"].sum(min_count=1),
            "stored_bytes": g["stored_bytes"].sum(min_count=1),
            "loaded_bytes": g["loaded_bytes"].sum(min_count=1),
            "usage_frac": g["usage_frac"].max(),
        }).reset_index().rename(columns={"bucket": "t_s"})
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["hit_rate"] = np.where(frame["queries_tokens"] > 0,
                                         frame["hits_tokens"] / frame["queries_tokens"], np.nan)
        frame["store_bytes_per_s"] = frame["stored_bytes"] / bucket
        frame["load_bytes_per_s"] = frame["loaded_bytes"] / bucket
        out.append(TierSeries(str(medium), frame))
    return out
