"""Series the charts draw, derived from bucketed steps, requests and memory tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.data.downsample import envelope_band, envelope_points, rolling_ratio
from dashboard.data.steps import View

GIB = 2**30

LATENCY_COLUMNS: dict[str, str] = {
    "ttft_s": "TTFT", "e2e_s": "end-to-end", "queued_s": "queue", "prefill_s": "prefill",
    "decode_s": "decode",
}
"""Request latency columns and their display names."""


def kv_series(buckets: pd.DataFrame) -> pd.DataFrame:
    """KV usage (fraction of blocks) as envelope points: ``t_s``, ``value``, ``engine_id``."""
    return envelope_points(buckets, "kv_usage_frac")


def kv_band(buckets: pd.DataFrame) -> pd.DataFrame:
    """KV usage (fraction of blocks) per bucket as a min-max band: ``t_s``, ``lo``, ``hi``, ``engine_id``."""
    return envelope_band(buckets, "kv_usage_frac")


def queue_band(buckets: pd.DataFrame) -> pd.DataFrame:
    """Running and waiting requests per bucket as min-max bands with a ``state`` column."""
    return pd.concat([envelope_band(buckets, c).assign(state=c) for c in ("running", "waiting")],
                     ignore_index=True)


def queue_series(buckets: pd.DataFrame) -> pd.DataFrame:
    """Running and waiting requests as envelope points with a ``state`` column."""
    parts = []
    for col in ("running", "waiting"):
        p = envelope_points(buckets, col)
        p["state"] = col
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


def bucket_centers(buckets: pd.DataFrame, view: View) -> np.ndarray:
    """Time (s) of each bucket's centre."""
    return view.t0_s + (buckets["bucket"].to_numpy() + 0.5) * view.width_s


def rate_series(buckets: pd.DataFrame, view: View, cols: dict[str, str],
                smooth_s: float = 0.0) -> pd.DataFrame:
    """Per-second rates of summed counters (``cols`` maps column -> series name).

    Columns: ``t_s`` (bucket centre), ``per_s``, ``series``, ``engine_id``; empty buckets are 0
    so a pause shows as a drop instead of a straight line across it. With ``smooth_s`` larger
    than a bucket, each rate is the mean over the trailing ``smooth_s`` seconds.
    """
    parts = []
    full = _all_buckets(buckets, view)
    window = max(int(round(smooth_s / view.width_s)), 1)
    for col, name in cols.items():
        counts = full[col].fillna(0.0)
        if window > 1:
            counts = counts.groupby(full["engine_id"]).transform(
                lambda x: x.rolling(window, min_periods=1).mean())
        v = counts.to_numpy() / view.width_s
        parts.append(pd.DataFrame({"t_s": bucket_centers(full, view), "per_s": v, "series": name,
                                   "engine_id": full["engine_id"].to_numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _all_buckets(buckets: pd.DataFrame, view: View) -> pd.DataFrame:
    """Buckets of the view's step-filled span, with empty ones present (counters 0)."""
    if buckets.empty:
        return buckets
    out = []
    for eid, g in buckets.groupby("engine_id"):
        lo, hi = int(g["bucket"].min()), int(g["bucket"].max())
        idx = pd.RangeIndex(lo, hi + 1)
        g2 = g.set_index("bucket").reindex(idx)
        g2["engine_id"] = eid
        g2["n_steps"] = g2["n_steps"].fillna(0)
        g2.index.name = "bucket"
        out.append(g2.reset_index())
    return pd.concat(out, ignore_index=True)


def hit_rate_series(buckets: pd.DataFrame, view: View, rolling_s: float) -> pd.DataFrame:
    """Prefix-cache hit rate per bucket and over a rolling window of ``rolling_s`` seconds.

    Columns: ``t_s``, ``hit_rate_frac``, ``series`` ("per step"/"per bucket" and "rolling N s"),
    ``queries_tokens``. Buckets without prefix queries have no per-bucket value.
    """
    full = _all_buckets(buckets, view)
    if full.empty:
        return pd.DataFrame(columns=["t_s", "hit_rate_frac", "series", "queries_tokens", "engine_id"])
    parts = []
    per_step = bool((buckets["n_steps"] <= 1).all())
    for eid, g in full.groupby("engine_id"):
        q = g["prefix_queries_tokens"].to_numpy(dtype=float)
        h = g["prefix_hits_tokens"].to_numpy(dtype=float)
        t = bucket_centers(g, view)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(np.nan_to_num(q) > 0, h / np.where(q > 0, q, 1), np.nan)
        window = max(int(round(rolling_s / view.width_s)), 1)
        roll = rolling_ratio(h, q, window)
        parts.append(pd.DataFrame({"t_s": t, "hit_rate_frac": rate,
                                   "series": "per step" if per_step else "per bucket",
                                   "queries_tokens": q, "engine_id": eid}))
        parts.append(pd.DataFrame({"t_s": t, "hit_rate_frac": roll, "series": f"rolling {rolling_s:g} s",
                                   "queries_tokens": q, "engine_id": eid}))
    out = pd.concat(parts, ignore_index=True)
    return out.dropna(subset=["hit_rate_frac"]).reset_index(drop=True)


def preemption_strip(buckets: pd.DataFrame, view: View) -> pd.DataFrame:
    """The runs of adjacent buckets of the view that preempted (any engine): ``t_s``, ``t_end_s``.
    One rect per run marks them, where a mark per preempting bucket made hundreds of elements for
    the browser to redraw on a zoom."""
    hit = np.zeros(view.buckets + 2, dtype=bool)  # a bucket on each side that never preempts
    if not buckets.empty:
        b = buckets.loc[buckets["preemptions"].fillna(0) > 0, "bucket"].to_numpy(dtype=int)
        hit[1 + b[(b >= 0) & (b < view.buckets)]] = True
    edges = np.flatnonzero(np.diff(hit.astype(np.int8)))  # run i covers buckets edges[2i]..edges[2i+1]-1
    return pd.DataFrame({"t_s": view.t0_s + edges[0::2] * view.width_s,
                         "t_end_s": view.t0_s + edges[1::2] * view.width_s})


def bucket_segments(points: pd.DataFrame, view: View, value: str) -> pd.DataFrame:
    """Per-bucket values (``t_s`` at bucket centres, ``engine_id``) as flat steps: a row at each
    bucket's start and one closing row at the end of each run of adjacent buckets (of one engine),
    with ``run`` numbering the runs, so a step-after line per run draws every bucket, a lone one
    too, without joining across buckets that have none (Vega-Lite drops NaN rows and would join
    across them)."""
    parts = []
    runs = 0
    for eid, g in points.groupby("engine_id", dropna=False, sort=False):
        idx = np.floor((g["t_s"].to_numpy() - view.t0_s) / view.width_s).astype(int)
        ok = (idx >= 0) & (idx < view.buckets)
        idx, v = idx[ok], g[value].to_numpy(dtype=float)[ok]
        order = np.argsort(idx, kind="stable")
        idx, v = idx[order], v[order]
        run = runs + np.cumsum(np.r_[True, np.diff(idx) > 1])
        runs = int(run[-1]) if len(run) else runs
        end = np.r_[run[1:] != run[:-1], True] if len(run) else np.zeros(0, dtype=bool)
        t = np.r_[idx, idx[end] + 1] * view.width_s + view.t0_s
        parts.append(pd.DataFrame({"t_s": t, value: np.r_[v, v[end]], "run": np.r_[run, run[end]],
                                   "engine_id": eid}).sort_values(["run", "t_s"], kind="stable"))
    if not parts:
        return pd.DataFrame({"t_s": [], value: [], "run": [], "engine_id": []})
    return pd.concat(parts, ignore_index=True)


def preemption_episodes(preempting: pd.DataFrame, gap_s: float) -> pd.DataFrame:
    """Merge preempting steps closer than ``gap_s`` into episodes (one row each)."""
    cols = ["t_start_s", "t_end_s", "duration_s", "preemptions", "steps", "peak_waiting"]
    if preempting.empty:
        return pd.DataFrame(columns=cols)
    t = preempting["t_s"].to_numpy()
    new = np.r_[True, np.diff(t) > gap_s]
    ep = np.cumsum(new) - 1
    g = preempting.assign(ep=ep).groupby("ep")
    out = pd.DataFrame({
        "t_start_s": g["t_s"].min(), "t_end_s": g["t_s"].max(),
        "preemptions": g["preemptions"].sum().astype(int), "steps": g["t_s"].count(),
        "peak_waiting": g["waiting"].max(),
    })
    out["duration_s"] = out["t_end_s"] - out["t_start_s"]
    return out[cols].reset_index(drop=True)


DEMAND_RESIDUE_TOKENS = 1e-6
"""Below this, a demand is the float residue of a request's +w at arrival and -w at finish summed
over thousands of seconds (seen: -1e-9 and +4e-11 tokens with nobody in the system), drawn as a
y-axis below zero: it is 0."""


def kv_demand(requests: pd.DataFrame, view: View) -> pd.DataFrame:
    """Estimated KV demand in tokens over ``view``: every request in the system (arrived, not
    finished) holds its prompt minus its prefix-cache hits (shared blocks are not counted per
    request), plus its generated tokens growing linearly from first token to finish.
    Columns: ``t_s``, ``demand_tokens``, ``in_system``. Built from finished requests only.
    """
    grid = view.t0_s + (np.arange(view.buckets) + 0.5) * view.width_s
    if requests.empty:
        return pd.DataFrame({"t_s": grid, "demand_tokens": 0.0, "in_system": 0})
    r = requests.dropna(subset=["t_arrival_s", "t_finished_s"])
    arr = r["t_arrival_s"].to_numpy(float)
    fin = r["t_finished_s"].to_numpy(float)
    ttft = np.nan_to_num(r["ttft_s"].to_numpy(float))
    first = np.minimum(arr + ttft, fin)
    prompt = np.nan_to_num(r["prompt_tokens"].to_numpy(float))
    prompt = np.maximum(prompt - np.nan_to_num(r["cached_tokens"].to_numpy(float)), 0.0)
    gen = np.nan_to_num(r["generation_tokens"].to_numpy(float))
    # Step parts: +prompt at arrival, -prompt at finish; counts likewise.
    def step_sum(times_on: np.ndarray, times_off: np.ndarray, w: np.ndarray) -> np.ndarray:
        on = np.searchsorted(grid, times_on, side="left")
        off = np.searchsorted(grid, times_off, side="left")
        acc = np.zeros(grid.size + 1)
        np.add.at(acc, on, w)
        np.add.at(acc, off, -w)
        return np.cumsum(acc)[:-1]

    span = np.maximum(fin - first, 1e-9)
    slope = gen / span
    held_prompt = step_sum(arr, fin, prompt)
    s_sum = step_sum(first, fin, slope)
    b_sum = step_sum(first, fin, slope * first)
    ramp = grid * s_sum - b_sum
    count = step_sum(arr, fin, np.ones_like(arr))
    demand = held_prompt + ramp
    demand[demand < DEMAND_RESIDUE_TOKENS] = 0.0
    return pd.DataFrame({"t_s": grid, "demand_tokens": demand,
                         "in_system": np.rint(count).astype(int)})


WATERFALL_STEPS: tuple[tuple[str, str], ...] = (
    ("weights_bytes", "model weights"),
    ("activation_peak_bytes", "activation peak"),
    ("non_torch_bytes", "non-torch (NCCL, CUDA ctx)"),
    ("cuda_graph_bytes", "CUDA graphs"),
    ("kv_cache_bytes", "KV cache"),
)
"""Start-up consumers of the memory budget, in vLLM's order."""


def startup_waterfall(row: pd.Series, total_label: str = "device total",
                      kv_held_bytes: float | None = None, kv_label: str = "KV cache") -> pd.DataFrame:
    """Waterfall bars from device total to the budget, its consumers, and what is left.

    The KV bar is what the cache held (``kv_held_bytes``: blocks × bytes per block) when known,
    else what start-up measured for it; a negative start-up figure (no room at all) is no KV bar
    but an "over the budget" bar from the budget to what start-up used.
    Columns: ``label``, ``start_gib``, ``end_gib``, ``kind`` (total/budget/used/left/outside/over),
    ``value_gib``, ``order``. Consumers vLLM did not report are left out (listed in ``missing``
    attrs of the frame).
    """
    total = _f(row.get("total_bytes"))
    budget = _f(row.get("budget_bytes"))
    bars: list[dict[str, object]] = []
    missing: list[str] = []
    if total is not None:
        bars.append(dict(label=total_label, start=0.0, end=total, kind="total"))
    if total is not None and budget is not None:
        bars.append(dict(label="outside gpu_memory_utilization", start=budget, end=total, kind="outside"))
    if budget is not None:
        bars.append(dict(label="budget", start=0.0, end=budget, kind="budget"))
    level = 0.0
    for col, label in WATERFALL_STEPS:
        v = _f(row.get(col))
        if col == "kv_cache_bytes":
            if kv_held_bytes is not None:
                v, label = kv_held_bytes, kv_label
            elif v is not None and v < 0:
                continue  # no room: drawn as "over the budget" below
        if v is None:
            missing.append(label)
            continue
        bars.append(dict(label=label, start=level, end=level + v, kind="used"))
        level += v
    if budget is not None and level > budget:
        bars.append(dict(label="over the budget (no room for a KV cache)", start=budget, end=level,
                         kind="over"))
    elif budget is not None:
        bars.append(dict(label="left in budget", start=level, end=budget, kind="left"))
    df = pd.DataFrame(bars)
    if df.empty:
        return pd.DataFrame(columns=["label", "start_gib", "end_gib", "kind", "value_gib", "order"])
    df["start_gib"] = df["start"] / GIB
    df["end_gib"] = df["end"] / GIB
    df["value_gib"] = (df["end"] - df["start"]) / GIB
    df["order"] = np.arange(len(df))
    df = df.drop(columns=["start", "end"])
    df.attrs["missing"] = missing
    return df


def _f(v: object) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(x) else x


def latency_percentiles(requests: pd.DataFrame) -> pd.DataFrame:
    """p50/p95/p99 (s) of each latency column: rows = metric, columns = p50_s, p95_s, p99_s, n."""
    rows = []
    for col, name in LATENCY_COLUMNS.items():
        s = requests[col].dropna() if col in requests else pd.Series(dtype=float)
        rows.append({"metric": name, "p50_s": s.quantile(0.5) if len(s) else np.nan,
                     "p95_s": s.quantile(0.95) if len(s) else np.nan,
                     "p99_s": s.quantile(0.99) if len(s) else np.nan, "n": int(len(s))})
    return pd.DataFrame(rows)


def split_by_prompt(requests: pd.DataFrame, threshold_tokens: float) -> pd.DataFrame:
    """p50/p95 of each latency for prompts shorter vs at least ``threshold_tokens`` (long format)."""
    rows = []
    for group, sel in (("short", requests["prompt_tokens"] < threshold_tokens),
                       ("long", requests["prompt_tokens"] >= threshold_tokens)):
        sub = requests[sel]
        for col, name in LATENCY_COLUMNS.items():
            s = sub[col].dropna()
            for q in (0.5, 0.95):
                rows.append({"group": f"{group} prompts (n={len(sub)})", "metric": name,
                             "quantile": f"p{int(q * 100)}",
                             "seconds": float(s.quantile(q)) if len(s) else np.nan})
    return pd.DataFrame(rows)
