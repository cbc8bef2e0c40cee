"""Per-pixel-bucket downsampling of time series: min/max envelopes drawn as lines, and bucket sums."""

from __future__ import annotations

import numpy as np
import pandas as pd


def minmax_indices(t: np.ndarray, y: np.ndarray, t0: float, t1: float, buckets: int) -> np.ndarray:
    """Indices of the points that draw ``y(t)`` within [t0, t1] at ``buckets`` pixel columns.

    ``t`` must be sorted. Per bucket the first, minimum, maximum and last points are kept (M4),
    so the line looks the same as the full series at that resolution; a range with no more points
    than ``4 * buckets`` comes back whole. NaN values are never chosen as min or max.
    """
    i0 = int(np.searchsorted(t, t0, side="left"))
    i1 = int(np.searchsorted(t, t1, side="right"))
    n = i1 - i0
    if n <= 4 * buckets:
        return np.arange(i0, i1)
    tt = t[i0:i1]
    yy = y[i0:i1].astype(np.float64)
    width = max(t1 - t0, 1e-12) / buckets
    b = np.clip(((tt - t0) / width).astype(np.int64), 0, buckets - 1)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:], n] - 1
    fin = np.where(np.isnan(yy), np.inf, yy)
    mins = np.minimum.reduceat(fin, starts)
    fax = np.where(np.isnan(yy), -np.inf, yy)
    maxs = np.maximum.reduceat(fax, starts)
    seg = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n]))
    is_min = fin == mins[seg]
    is_max = fax == maxs[seg]
    first_min = _first_per_segment(np.flatnonzero(is_min), seg, starts.size)
    first_max = _first_per_segment(np.flatnonzero(is_max), seg, starts.size)
    keep = np.concatenate([starts, ends, first_min[first_min >= 0], first_max[first_max >= 0]])
    return np.unique(keep) + i0


def _first_per_segment(idx: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """For each segment, the first of ``idx`` in it (-1 when none)."""
    out = np.full(n_seg, -1, dtype=np.int64)
    if idx.size:
        s = seg[idx]
        first = np.r_[True, s[1:] != s[:-1]]
        out[s[first]] = idx[first]
    return out


def minmax_frame(df: pd.DataFrame, time_col: str, value_cols: list[str], t0: float, t1: float,
                 buckets: int, by: str | None = None) -> pd.DataFrame:
    """Rows of ``df`` needed to draw each of ``value_cols`` over [t0, t1] (per group of ``by``)."""
    if df.empty:
        return df
    parts = []
    groups = [(None, df)] if by is None else list(df.groupby(by, sort=True))
    for _, g in groups:
        g = g.sort_values(time_col, kind="stable")
        t = g[time_col].to_numpy(dtype=np.float64)
        keep: set[int] = set()
        for c in value_cols:
            keep.update(minmax_indices(t, g[c].to_numpy(dtype=np.float64), t0, t1, buckets).tolist())
        parts.append(g.iloc[sorted(keep)])
    return pd.concat(parts, ignore_index=True) if parts else df.iloc[0:0]


def envelope_points(buckets: pd.DataFrame, col: str) -> pd.DataFrame:
    """Two points per bucket, (first time, min) and (last time, max): a line through them draws
    the bucket's full range at one pixel column. Columns: ``t_s``, ``value``, ``engine_id``."""
    lo, hi = f"{col}_min", f"{col}_max"
    if buckets.empty:
        return pd.DataFrame({"t_s": [], "value": [], "engine_id": []})
    a = pd.DataFrame({"t_s": buckets["t_lo_s"], "value": buckets[lo], "engine_id": buckets["engine_id"]})
    b = pd.DataFrame({"t_s": buckets["t_hi_s"], "value": buckets[hi], "engine_id": buckets["engine_id"]})
    out = pd.concat([a, b], ignore_index=True).sort_values(["engine_id", "t_s"], kind="stable")
    out = out.dropna(subset=["value"]).drop_duplicates(["engine_id", "t_s", "value"])
    return out.reset_index(drop=True)


def envelope_band(buckets: pd.DataFrame, col: str) -> pd.DataFrame:
    """A step-after band from each bucket's ``lo`` (min) to its ``hi`` (max): a row per bucket at
    its first step's time, narrowing to a line where a bucket holds one step (half the rows of
    ``envelope_points``). After an engine's last bucket a closing row ends the band at its last
    step; before a span of empty buckets a row at the bucket's last step holds its max across
    the span (as ``envelope_points``' line did), so no range is drawn across buckets without
    steps. Columns: ``t_s``, ``lo``, ``hi``, ``engine_id``."""
    lo = buckets[f"{col}_min"].to_numpy(dtype=float)
    hi = buckets[f"{col}_max"].to_numpy(dtype=float)
    ok = ~(np.isnan(lo) | np.isnan(hi))
    t_lo, t_hi = buckets["t_lo_s"].to_numpy(dtype=float)[ok], buckets["t_hi_s"].to_numpy(dtype=float)[ok]
    eng, lo, hi = buckets["engine_id"].to_numpy(dtype=float)[ok], lo[ok], hi[ok]
    idx = buckets["bucket"].to_numpy(dtype=float)[ok]
    key = np.where(np.isnan(eng), -1.0, eng)  # steps without an engine are one series too
    order = np.lexsort((t_lo, key))
    t_lo, t_hi, eng, lo, hi, key, idx = (a[order] for a in (t_lo, t_hi, eng, lo, hi, key, idx))
    last = np.r_[key[1:] != key[:-1], True][:eng.size]  # each engine's last bucket
    gap = ~last & (np.r_[np.diff(idx), 1.0][:eng.size] > 1)  # empty buckets follow
    extra = last | gap
    pos = np.arange(eng.size) + np.cumsum(np.r_[False, extra[:-1]])[:eng.size]  # after earlier extras
    out = {k: np.empty(eng.size + int(extra.sum())) for k in ("t_s", "lo", "hi", "engine_id")}
    held_lo = np.where(gap, hi, lo)
    for k, v, end in (("t_s", t_lo, t_hi), ("lo", lo, held_lo), ("hi", hi, hi), ("engine_id", eng, eng)):
        out[k][pos] = v
        out[k][pos[extra] + 1] = end[extra]
    return pd.DataFrame(out)


def rolling_ratio(num: np.ndarray, den: np.ndarray, window: int) -> np.ndarray:
    """sum(num)/sum(den) over the last ``window`` entries (NaN where the denominator is 0)."""
    n = np.nan_to_num(num.astype(np.float64))
    d = np.nan_to_num(den.astype(np.float64))
    cn = np.r_[0.0, np.cumsum(n)]
    cd = np.r_[0.0, np.cumsum(d)]
    w = max(int(window), 1)
    idx = np.arange(1, n.size + 1)
    lo = np.maximum(idx - w, 0)
    sn = cn[idx] - cn[lo]
    sd = cd[idx] - cd[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, sn / np.where(sd > 0, sd, 1.0), np.nan)
