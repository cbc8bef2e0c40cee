"""Request latency percentiles from the server's histograms (attach sessions), with their bucket.

``latency_buckets`` holds, per scrape interval and engine, how many requests fell in each bucket
of vLLM's latency histograms (TTFT, inter-token, e2e, queue, prefill, decode, ...). A percentile of
a histogram is only known to lie inside one bucket; like Prometheus' ``histogram_quantile`` it is
interpolated linearly inside that bucket, and every value here comes with the bucket it lies in
(``Quantile.lo_s``..``hi_s``), which the report and the dashboard print beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.session.reader import Session
from profiler.units import fmt, fmt_s

QUANTILES = (0.5, 0.95, 0.99)
"""Percentiles the report gives (``_p50``, ``_p95``, ``_p99``)."""

METRICS: dict[str, str] = {
    "ttft": "TTFT", "itl": "inter-token", "e2e": "end-to-end", "queue": "queue",
    "prefill": "prefill", "decode": "decode", "inference": "inference",
    "decode_per_token": "decode per token",
}
"""``latency_buckets.metric`` values, in display order, with their display names."""

REQUEST_COLUMNS: dict[str, str] = {
    "ttft": "ttft_s", "e2e": "e2e_s", "queue": "queued_s", "prefill": "prefill_s",
    "decode": "decode_s", "inference": "inference_s",
}
"""Metrics that recorded sessions measure per request (``requests`` columns)."""


@dataclass(frozen=True)
class Quantile:
    """One percentile of a histogram and the bucket that holds it."""

    q: float
    value_s: float
    """Interpolated inside the bucket; in the +Inf bucket, its lower bound (as Prometheus does)."""
    lo_s: float
    hi_s: float | None
    """None: the +Inf bucket (the value is only known to be at least ``lo_s``)."""

    @property
    def bucket(self) -> list[float | None]:
        """``[lo_s, hi_s]`` for JSON."""
        return [self.lo_s, self.hi_s]

    def bucket_text(self) -> str:
        """``0.04–0.06 s`` (``≥ 40 s`` for the open last bucket)."""
        if self.hi_s is None:
            return f"≥ {_num(self.lo_s)} s"
        return f"{_num(self.lo_s)}–{_num(self.hi_s)} s"


def _num(x: float) -> str:
    return f"{x:g}"


def histogram_quantiles(lo_s: Sequence[float], hi_s: Sequence[float | None],
                        counts: Sequence[float], qs: Iterable[float] = QUANTILES) -> list[Quantile]:
    """Percentiles of a histogram given as buckets (``lo_s``, ``hi_s`` None = +Inf, count).

    Buckets without observations may be left out (their bounds are carried by the others). Empty:
    no observations, no percentiles.
    """
    df = pd.DataFrame({"lo": np.asarray(lo_s, dtype=float),
                       "hi": np.asarray([math.inf if h is None or pd.isna(h) else h for h in hi_s],
                                        dtype=float),
                       "n": np.asarray(counts, dtype=float)})
    df = df[df["n"] > 0].groupby(["lo", "hi"], as_index=False)["n"].sum().sort_values(["hi", "lo"])
    total = float(df["n"].sum())
    if total <= 0:
        return []
    cum = df["n"].cumsum().to_numpy()
    out = []
    for q in qs:
        rank = q * total
        i = int(np.searchsorted(cum, rank, side="left"))
        i = min(i, len(df) - 1)
        lo, hi, n = float(df["lo"].iloc[i]), float(df["hi"].iloc[i]), float(df["n"].iloc[i])
        before = float(cum[i - 1]) if i > 0 else 0.0
        if math.isinf(hi):
            out.append(Quantile(q, lo, lo, None))
            continue
        value = lo + (hi - lo) * ((rank - before) / n if n else 0.0)
        out.append(Quantile(q, min(max(value, lo), hi), lo, hi))
    return out


@dataclass(frozen=True)
class HistogramLatency:
    """One metric's percentiles over a set of intervals."""

    metric: str
    observations: int
    quantiles: list[Quantile]

    def get(self, q: float) -> Quantile | None:
        """The ``q`` percentile (None when not computed)."""
        return next((x for x in self.quantiles if abs(x.q - q) < 1e-9), None)


def _where(t0_unix_s: float | None, t1_unix_s: float | None,
           engine_id: int | None) -> tuple[str, tuple[Any, ...]]:
    conds, params = ["observations > 0", "metric IS NOT NULL", "lo_s IS NOT NULL"], []
    if t0_unix_s is not None:
        conds.append("t_unix_s > ?")
        params.append(t0_unix_s)
    if t1_unix_s is not None:
        conds.append("t_unix_s <= ?")
        params.append(t1_unix_s)
    if engine_id is not None:
        conds.append("engine_id = ?")
        params.append(engine_id)
    return " AND ".join(conds), tuple(params)


def histogram_latency(session: Session, t0_unix_s: float | None = None,
                      t1_unix_s: float | None = None, engine_id: int | None = None,
                      qs: Iterable[float] = QUANTILES) -> dict[str, HistogramLatency]:
    """Per metric: percentiles of every observation of intervals ending in (t0, t1] (all engines
    unless ``engine_id``). Empty when the session has no histogram data (recorded sessions)."""
    where, params = _where(t0_unix_s, t1_unix_s, engine_id)
    rows = session.rows(
        f"SELECT metric, lo_s, hi_s, SUM(observations) FROM latency_buckets WHERE {where} "
        "GROUP BY metric, lo_s, hi_s", params)
    if not rows:
        return {}
    df = pd.DataFrame(rows, columns=["metric", "lo_s", "hi_s", "n"])
    qs = tuple(qs)
    out = {}
    for metric, g in df.groupby("metric", sort=False):
        quantiles = histogram_quantiles(g["lo_s"], g["hi_s"].tolist(), g["n"], qs)
        if quantiles:
            out[str(metric)] = HistogramLatency(str(metric), int(g["n"].sum()), quantiles)
    return {m: out[m] for m in [*METRICS, *sorted(set(out) - set(METRICS))] if m in out}


def histogram_buckets(session: Session, metric: str, t0_unix_s: float | None = None,
                      t1_unix_s: float | None = None) -> pd.DataFrame:
    """Observations per bucket of ``metric`` (``lo_s``, ``hi_s`` NaN = +Inf, ``observations``)."""
    where, params = _where(t0_unix_s, t1_unix_s, None)
    rows = session.rows(
        f"SELECT lo_s, hi_s, SUM(observations) FROM latency_buckets WHERE {where} AND metric = ? "
        "GROUP BY lo_s, hi_s ORDER BY lo_s", (*params, metric))
    return pd.DataFrame(rows, columns=["lo_s", "hi_s", "observations"]).astype(
        {"lo_s": float, "hi_s": float, "observations": int})


def binned_percentiles(session: Session, metric: str, start_unix_s: float, bin_s: float,
                       qs: Iterable[float] = QUANTILES) -> pd.DataFrame:
    """Percentiles of ``metric`` per time bin of ``bin_s`` seconds (intervals grouped by their end).

    Columns: ``t_s`` (bin start, from ``start_unix_s``), ``bin_s``, ``observations``, and per
    percentile ``p50_s``, ``p50_lo_s``, ``p50_hi_s`` (NaN = +Inf), ... Bins without observations
    are absent (nothing finished there).
    """
    where, params = _where(None, None, None)
    rows = session.rows(
        f"SELECT t_unix_s, lo_s, hi_s, observations FROM latency_buckets WHERE {where} "
        "AND metric = ?", (*params, metric))
    qs = tuple(qs)
    cols = ["t_s", "bin_s", "observations"] + [
        f"p{int(round(q * 100))}{suffix}" for q in qs for suffix in ("_s", "_lo_s", "_hi_s")]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows, columns=["t", "lo_s", "hi_s", "n"])
    df["bin"] = np.floor((df["t"].astype(float) - start_unix_s) / bin_s).astype(int)
    out = []
    for b, g in df.groupby("bin"):
        row: dict[str, Any] = {"t_s": b * bin_s, "bin_s": bin_s, "observations": int(g["n"].sum())}
        for x in histogram_quantiles(g["lo_s"], g["hi_s"].tolist(), g["n"], qs):
            name = f"p{int(round(x.q * 100))}"
            row[f"{name}_s"] = x.value_s
            row[f"{name}_lo_s"] = x.lo_s
            row[f"{name}_hi_s"] = math.nan if x.hi_s is None else x.hi_s
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def _key(metric: str, q: float) -> str:
    return f"{metric}_p{int(round(q * 100))}"


def fill_report_latency(latency: dict[str, Any], session: Session) -> dict[str, Any]:
    """The report's ``latency_s`` with ``source`` and ``resolution_s`` added.

    A session with per-request latencies (recorded) keeps them: ``source`` "requests",
    ``resolution_s`` null (each request measured exactly). Otherwise (attach) every histogram the
    server exported fills ``<metric>_p50/p95/p99`` (ttft, itl, e2e, queue, prefill, decode,
    inference, decode_per_token), ``source`` is "histogram" and ``resolution_s`` gives, per key,
    the ``[lo, hi]`` bucket the value lies in (hi null: the open +Inf bucket).
    """
    out = dict(latency)
    if any(v is not None for k, v in latency.items() if k.endswith(("_p50", "_p95", "_p99"))):
        out["source"], out["resolution_s"] = "requests", None
        return out
    hist = histogram_latency(session)
    if not hist:
        out["source"], out["resolution_s"] = None, None
        return out
    resolution: dict[str, list[float | None]] = {}
    for metric, h in hist.items():
        for x in h.quantiles:
            out[_key(metric, x.q)] = x.value_s
            resolution[_key(metric, x.q)] = x.bucket
    out["source"], out["resolution_s"] = "histogram", resolution
    return out


def format_latency(latency: dict[str, Any]) -> str:
    """The text report's latency line(s): TTFT and e2e p50/p95/p99, with buckets when histogram."""
    res = latency.get("resolution_s") or {}

    def one(metric: str, name: str) -> str:
        vals = "/".join(fmt(latency.get(_key(metric, q)), "{:.3f}") for q in QUANTILES)
        text = f"{name} p50/p95/p99 {vals} s"
        buckets = [res.get(_key(metric, q)) for q in QUANTILES]
        if any(b for b in buckets):
            text += " (buckets " + ", ".join(
                (f"{b[0]:g}–{b[1]:g}" if b[1] is not None else f"≥{b[0]:g}") if b else "n/a"
                for b in buckets) + " s)"
        return text

    line = f"{one('ttft', 'TTFT')}   {one('e2e', 'e2e')}"
    if latency.get("source") == "histogram":
        line += "   (from the server's histograms)"
    return line


def quantile_text(x: Quantile | None) -> str:
    """``43.1 ms (bucket 0.04–0.06 s)``, or n/a."""
    if x is None:
        return fmt(None, "{}")
    return f"{fmt_s(x.value_s)} (bucket {x.bucket_text()})"
