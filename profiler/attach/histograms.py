"""Latency histograms of vLLM's /metrics: per-engine cumulative buckets and per-interval deltas.

vLLM exports its request latencies only as Prometheus histograms (cumulative counts per upper
bound ``le``). A scrape gives, per engine, each histogram's cumulative buckets; ``HistogramTracker``
turns two consecutive scrapes into the observations that fell in each bucket during the interval
(restarts handled like counters), and ``bucket_rows`` makes the ``latency_buckets`` rows of the
buckets that got any. Nothing here is more exact than the server's buckets: the analysis states
the bucket beside every percentile it derives.

This module only maps samples that ``profiler.attach.metrics.parse_metrics`` already parsed with
prometheus_client's parser; it keeps no scrape loop of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from profiler.session.rows import LatencyBucketRow

HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
    "prefill": ("vllm:request_prefill_time_seconds",),
    "decode": ("vllm:request_decode_time_seconds",),
    "inference": ("vllm:request_inference_time_seconds",),
    "decode_per_token": ("vllm:request_time_per_output_token_seconds",),
}
"""``latency_buckets.metric`` -> histogram family names, newest first (the first one a server
exposes wins; vLLM before 0.11 called the inter-token histogram ``time_per_output_token``)."""

_SUFFIXES = ("_bucket", "_count", "_sum")

WANTED_NAMES: frozenset[str] = frozenset(
    name + suffix for names in HISTOGRAMS.values() for name in names for suffix in ("", *_SUFFIXES)
)
"""Family and sample names the /metrics parser must keep for these histograms."""

_FAMILY_OF: dict[str, tuple[str, str, int]] = {
    name + suffix: (metric, suffix, rank)
    for metric, names in HISTOGRAMS.items() for rank, name in enumerate(names) for suffix in _SUFFIXES
}
"""Sample name -> (metric, suffix, rank of the family name: 0 = newest)."""


@dataclass(frozen=True)
class Histogram:
    """One engine's cumulative histogram in one scrape (summed over its other label series)."""

    bounds: tuple[float, ...]
    """Upper bounds ``le`` in seconds, ascending, the last one +Inf."""
    cumulative: tuple[float, ...]
    """Observations at or below each bound since the server started."""
    sum_s: float | None
    count: float | None


def collect(samples: Iterable[tuple[str, dict[str, str], float]],
            problems: dict[tuple[str, str], str] | None = None) -> dict[str, dict[str, Histogram]]:
    """Per engine label (``engine``, "0" when absent): metric -> its cumulative histogram.

    ``samples`` are (sample name, labels, value) of any families (others are ignored). A histogram
    with an impossible value (not finite, negative, counts going down with ``le``, no +Inf bucket)
    is left out of this scrape, and ``problems`` gets one line per metric.
    """
    buckets: dict[tuple[str, str], dict[float, float]] = {}
    totals: dict[tuple[str, str], list[float]] = {}
    ranks: dict[tuple[str, str], int] = {}
    bad: dict[tuple[str, str], str] = {}
    for name, labels, value in samples:
        hit = _FAMILY_OF.get(name)
        if hit is None:
            continue
        metric, suffix, rank = hit
        key = (labels.get("engine") or "0", metric)
        if ranks.setdefault(key, rank) != rank:
            if rank > ranks[key]:
                continue  # an older name of a histogram the server also exports by its new name
            ranks[key] = rank
            buckets.pop(key, None)
            totals.pop(key, None)
        if not math.isfinite(value) or value < 0:
            bad[key] = f"{name} = {value!r} is {'negative' if value < 0 else 'not a finite number'}"
            continue
        if suffix == "_bucket":
            try:
                le = float(labels.get("le", "nan"))
            except ValueError:
                le = math.nan
            if math.isnan(le):
                bad[key] = f"{name} has a bucket without a numeric le"
                continue
            by_le = buckets.setdefault(key, {})
            by_le[le] = by_le.get(le, 0.0) + value
        else:
            t = totals.setdefault(key, [0.0, 0.0])
            t[0 if suffix == "_sum" else 1] += value
    out: dict[str, dict[str, Histogram]] = {}
    for key, by_le in buckets.items():
        label, metric = key
        if key in bad:
            continue
        bounds = tuple(sorted(by_le))
        cum = tuple(by_le[b] for b in bounds)
        if not bounds or bounds[-1] != math.inf:
            bad[key] = f"{HISTOGRAMS[metric][ranks[key]]} has no +Inf bucket"
            continue
        if any(b < a for a, b in zip(cum, cum[1:], strict=False)):
            bad[key] = f"{HISTOGRAMS[metric][ranks[key]]} buckets decrease with le"
            continue
        t = totals.get(key)
        out.setdefault(label, {})[metric] = Histogram(bounds, cum, t[0] if t else None,
                                                      t[1] if t else None)
    if problems is not None:
        for (_, metric), text in bad.items():
            problems[(f"latency:{metric}", "impossible")] = text
    return out


@dataclass(frozen=True)
class BucketDelta:
    """Observations of one histogram bucket during one interval."""

    metric: str
    lo_s: float
    """Lower bound (the previous bucket's ``le``; 0 for the first bucket)."""
    hi_s: float
    """Upper bound ``le`` (+Inf for the last bucket)."""
    observations: int


class HistogramTracker:
    """Turns one engine's cumulative histograms into per-interval bucket observations."""

    def __init__(self) -> None:
        self._last: dict[str, Histogram] = {}
        self._has_baseline = False

    def update(self, hists: dict[str, Histogram], reset: bool) -> list[BucketDelta] | None:
        """Observations per bucket since the previous call (None on the first call: a baseline).

        ``reset``: the server restarted (its counters start again), so every histogram counts from
        zero. A histogram whose bounds changed or whose buckets went down is counted from zero too
        (a restart the server did not announce). One missing from a scrape keeps its last value,
        so the next scrape that has it covers the interval it was missing from; one first seen
        after the baseline only sets its own baseline (its history is older than the session).
        """
        baseline = not self._has_baseline
        self._has_baseline = True
        out: list[BucketDelta] = []
        for metric, now in hists.items():
            last = self._last.get(metric)
            self._last[metric] = now
            if baseline or (last is None and not reset):
                continue
            base: tuple[float, ...] | None = None
            if (not reset and last is not None and last.bounds == now.bounds
                    and all(b >= a for a, b in zip(last.cumulative, now.cumulative, strict=True))):
                base = last.cumulative
            prev, lo = 0.0, 0.0
            for i, (hi, cum) in enumerate(zip(now.bounds, now.cumulative, strict=True)):
                grown = cum - (base[i] if base is not None else 0.0)
                n = int(round(grown - prev))
                prev = grown
                if n > 0:
                    out.append(BucketDelta(metric, lo, hi, n))
                lo = hi
        return None if baseline else out


def bucket_rows(engine_id: int | None, t_unix_s: float,
                deltas: Iterable[BucketDelta]) -> list[LatencyBucketRow]:
    """``latency_buckets`` rows (the +Inf bound is stored as NULL: SQLite keeps no infinity)."""
    return [LatencyBucketRow(engine_id, t_unix_s, d.metric, d.lo_s,
                             None if math.isinf(d.hi_s) else d.hi_s, d.observations)
            for d in deltas]
