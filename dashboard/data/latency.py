"""Latency from the server's histograms (attach sessions), as the dashboard draws it.

Only ``profiler.analysis.latency`` computes; this module shapes its results into tables: each
percentile with the bucket that holds it, counts per bucket, and percentiles per time bin.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from profiler.analysis import latency
from profiler.session.reader import open_session

BIN_TARGET = 60
"""Percentiles over time are drawn in about this many time bins."""
MIN_BIN_S = 1.0
"""... each at least this long (shorter bins hold too few requests for a percentile)."""


def _bucket(lo: float, hi: float | None) -> str:
    return f"≥ {lo:g} s" if hi is None or (isinstance(hi, float) and math.isnan(hi)) else f"{lo:g}–{hi:g} s"


def percentile_table(path: str | Path) -> pd.DataFrame:
    """One row per histogram: ``latency``, ``requests`` (observations), and per percentile its value
    (``p50_s``) and bucket (``p50 bucket``). Empty without histogram data."""
    with open_session(path) as session:
        hist = latency.histogram_latency(session)
    rows = []
    for metric, h in hist.items():
        row: dict[str, object] = {"latency": latency.METRICS.get(metric, metric),
                                  "observations": h.observations}
        for x in h.quantiles:
            name = f"p{int(round(x.q * 100))}"
            row[f"{name}_s"] = x.value_s
            row[f"{name} bucket"] = x.bucket_text()
        rows.append(row)
    return pd.DataFrame(rows)


def bucket_counts(path: str | Path, metric: str) -> pd.DataFrame:
    """Observations per bucket of ``metric``: ``bucket`` (label), ``lo_s``, ``hi_s``, ``observations``."""
    with open_session(path) as session:
        df = latency.histogram_buckets(session, metric)
    df["bucket"] = [_bucket(lo, hi) for lo, hi in zip(df["lo_s"], df["hi_s"], strict=True)]
    return df


def percentiles_over_time(path: str | Path, metric: str, start_unix_s: float,
                          duration_s: float) -> pd.DataFrame:
    """``metric``'s p50/p95/p99 per time bin (``profiler.analysis.latency.binned_percentiles``)."""
    bin_s = max(duration_s / BIN_TARGET, MIN_BIN_S)
    with open_session(path) as session:
        return latency.binned_percentiles(session, metric, start_unix_s, bin_s)
