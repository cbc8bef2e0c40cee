"""Two sessions side by side: their key numbers with a verdict only where a difference is real,
the settings that differ, and aligned series.

A verdict ("B is better/worse") is given only for outcome numbers (preemptions, latency, hit rate,
throughput, serving time), only when the two sessions are comparable (same model, about the same
requests) and only beyond noise: latency percentiles whose bootstrap 95 % intervals do not overlap,
a hit rate moved by at least ``HIT_RATE_NOISE`` (run-to-run noise measured on the same workload is
about 1 point), counts and rates moved by at least ``REL_NOISE``. Sizes and settings (KV blocks,
memory) are shown without a verdict: more memory is not worse when the cache was sized for it.
A latency from an attach session's server histograms is shown with the bucket it lies in, and
differs only when the two values' buckets (or a bucket and a per-request value) do not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboard.data import derive
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler.units import fmt_bytes, fmt_gib, fmt_pct, fmt_s, is_number

HIT_RATE_NOISE = 0.02
"""Prefix hit rates closer than 2 points read as the same."""
REL_NOISE = 0.10
"""Counts, rates and times closer than 10 % read as the same ..."""
COUNT_NOISE = 5
"""... and counts closer than this too."""
BOOTSTRAP = 400
"""Resamples for a latency percentile's 95 % interval."""
SAME_REQUESTS_FRAC = 0.10
"""Sessions whose finished request counts differ by more than this share are not comparable."""


@dataclass(frozen=True)
class Side:
    """What one session contributes: its report, finished requests and serving span."""

    report: dict[str, Any]
    requests: pd.DataFrame
    serving_s: float | None
    """First to last engine step (start-up excluded)."""
    generation_tokens: float | None


def side(data: SessionData, report: dict[str, Any], requests: pd.DataFrame) -> Side:
    """The Compare inputs of one loaded session."""
    f = data.steps.fine
    if f.empty:
        return Side(report, requests, None, None)
    serving = float(f["t_hi_s"].max() - f["t_lo_s"].min())
    gen = float(f["generation_tokens"].sum()) if f["generation_tokens"].notna().any() else None
    return Side(report, requests, serving if serving > 0 else None, gen)


def comparable(a: Side, b: Side) -> str | None:
    """Why the two sessions cannot be judged against each other (None when they can)."""
    ma, mb = a.report["session"].get("model"), b.report["session"].get("model")
    if not a.report.get("steps") or not b.report.get("steps"):
        return "one of them ran no engine step"
    if ma and mb and ma != mb:
        return f"different models ({ma} vs {mb})"
    na, nb = a.report.get("requests_finished") or 0, b.report.get("requests_finished") or 0
    if max(na, nb) and abs(na - nb) > SAME_REQUESTS_FRAC * max(na, nb):
        return f"different workloads ({na:,} vs {nb:,} finished requests)"
    return None


def _ci(values: pd.Series, q: float, seed: int) -> tuple[float, float] | None:
    v = values.dropna().to_numpy(dtype=float)
    if v.size < 10:
        return None
    rng = np.random.default_rng(seed)
    samples = np.quantile(rng.choice(v, size=(BOOTSTRAP, v.size), replace=True), q, axis=1)
    return float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))


def _verdict_rel(va: float, vb: float, lower_better: bool, floor: float = 0.0) -> str:
    if abs(vb - va) <= max(REL_NOISE * max(abs(va), abs(vb)), floor):
        return "same (within noise)"
    return "better" if (vb < va) == lower_better else "worse"


Row = tuple[str, Callable[[Side], Any], Callable[[Any], str], str]
"""(label, getter, formatter, kind): kind = lower/higher (outcomes), latency:<col>:<q>, or "" (no verdict)."""


def _lat(col: str, key: str) -> Callable[[Side], Any]:
    return lambda s: s.report["latency_s"].get(key)


def _tput(s: Side) -> float | None:
    return s.generation_tokens / s.serving_s if s.generation_tokens and s.serving_s else None


def _gpu_peak(s: Side) -> float | None:
    shown = [g["peak_used_bytes"] for g in s.report.get("gpus") or []
             if g.get("shown") and is_number(g.get("peak_used_bytes"))]
    return max(shown) if shown else None


ROWS: tuple[Row, ...] = (
    ("serving time (first to last step)", lambda s: s.serving_s, fmt_s, "lower"),
    ("generated tokens / s (serving)", _tput, lambda v: f"{v:,.0f}", "higher"),
    ("requests finished", lambda s: s.report.get("requests_finished"), lambda v: f"{int(v):,}", ""),
    ("preemptions", lambda s: s.report.get("preemptions"), lambda v: f"{int(v):,}", "lower-count"),
    ("prefix hit rate", lambda s: s.report["prefix_cache"].get("hit_rate"), fmt_pct, "hit"),
    ("TTFT p50", _lat("ttft_s", "ttft_p50"), fmt_s, "latency:ttft_s:0.5"),
    ("TTFT p95", _lat("ttft_s", "ttft_p95"), fmt_s, "latency:ttft_s:0.95"),
    ("end-to-end p50", _lat("e2e_s", "e2e_p50"), fmt_s, "latency:e2e_s:0.5"),
    ("end-to-end p95", _lat("e2e_s", "e2e_p95"), fmt_s, "latency:e2e_s:0.95"),
    ("peak KV usage", lambda s: s.report["kv_cache"].get("peak_usage_frac"), fmt_pct, ""),
    ("KV blocks", lambda s: s.report["engine"].get("num_gpu_blocks"), lambda v: f"{int(v):,}", ""),
    ("KV cache held", lambda s: s.report["kv_cache"].get("size_bytes"), fmt_bytes, ""),
    ("peak GPU memory", _gpu_peak, fmt_gib, ""),
)


def _delta(label: str, va: Any, vb: Any, fmt: Callable[[Any], str], kind: str) -> str:
    if not (is_number(va) and is_number(vb)):
        return "n/a"
    d = float(vb) - float(va)
    if kind == "hit" or label == "peak KV usage":
        return f"{d * 100:+.1f} pts"
    if fmt is fmt_s:
        return ("+" if d >= 0 else "−") + fmt_s(abs(d))
    if fmt is fmt_gib or fmt is fmt_bytes:
        return ("+" if d >= 0 else "−") + fmt(abs(d))
    rel = f" ({d / float(va):+.0%})" if float(va) else ""
    return f"{d:+,.0f}{rel}"


def _bucket(s: Side, kind: str) -> tuple[float, float] | None:
    """The histogram bucket a latency key number lies in (attach sessions: the report's
    ``resolution_s``; +Inf as ``inf``); None when it was measured per request, or is no latency."""
    if not kind.startswith("latency:"):
        return None
    _, col, q = kind.split(":")
    key = f"{col.removesuffix('_s')}_p{round(float(q) * 100)}"
    res = (s.report["latency_s"].get("resolution_s") or {}).get(key)
    if not (isinstance(res, list | tuple) and len(res) == 2 and is_number(res[0])):
        return None
    return float(res[0]), float(res[1]) if is_number(res[1]) else math.inf


def _with_bucket(text: str, bucket: tuple[float, float] | None) -> str:
    if bucket is None:
        return text
    lo, hi = bucket
    return text + (f" (bucket ≥ {lo:g} s)" if math.isinf(hi) else f" (bucket {lo:g}–{hi:g} s)")


def verdict(a: Side, b: Side, kind: str, va: Any, vb: Any) -> str:
    """"better", "worse", "same (within noise)" or "" (not an outcome, or not measured)."""
    if not kind or not (is_number(va) and is_number(vb)):
        return ""
    if kind == "hit":
        return ("same (within noise)" if abs(vb - va) < HIT_RATE_NOISE
                else "better" if vb > va else "worse")
    ba, bb = _bucket(a, kind), _bucket(b, kind)
    if ba is not None or bb is not None:
        # a histogram percentile is known only to its bucket: a difference inside it is not one
        ra = ba or (float(va), float(va))
        rb = bb or (float(vb), float(vb))
        if ra[1] >= rb[0] and rb[1] >= ra[0]:
            return "same (within the histogram bucket)"
        return "better" if vb < va else "worse"
    if kind.startswith("latency:"):
        _, col, q = kind.split(":")
        ca = _ci(a.requests[col], float(q), 1) if col in a.requests else None
        cb = _ci(b.requests[col], float(q), 2) if col in b.requests else None
        if ca is None or cb is None:
            return _verdict_rel(float(va), float(vb), True)
        if ca[1] >= cb[0] and cb[1] >= ca[0]:
            return "same (within noise)"
        return "better" if vb < va else "worse"
    if kind == "lower-count":
        return _verdict_rel(float(va), float(vb), True, COUNT_NOISE)
    return _verdict_rel(float(va), float(vb), kind == "lower")


def key_number_deltas(a: Side, b: Side) -> pd.DataFrame:
    """One row per key number, as text: ``metric``, ``A``, ``B``, ``B − A``, ``B is`` (a verdict only
    for outcomes, comparable sessions and differences beyond noise; ``attrs["why_no_verdict"]``)."""
    why = comparable(a, b)
    rows = []
    for label, get, fmt, kind in ROWS:
        va, vb = get(a), get(b)
        if va is None and vb is None:
            continue
        rows.append({"metric": label,
                     "A": _with_bucket(fmt(va), _bucket(a, kind)) if is_number(va) else "n/a",
                     "B": _with_bucket(fmt(vb), _bucket(b, kind)) if is_number(vb) else "n/a",
                     "B − A": _delta(label, va, vb, fmt, kind),
                     "B is": "" if why else verdict(a, b, kind, va, vb)})
    out = pd.DataFrame(rows, columns=["metric", "A", "B", "B − A", "B is"])
    out.attrs["why_no_verdict"] = why
    return out


def key_numbers_table(sides: list[tuple[str, Side]]) -> pd.DataFrame:
    """Many sessions: one row per key number, one column of text per session (in the order given);
    no deltas or verdicts (those compare two sessions)."""
    rows = []
    for label, get, fmt, _ in ROWS:
        values = [get(s) for _, s in sides]
        if all(v is None for v in values):
            continue
        rows.append({"metric": label, **{name: fmt(v) if is_number(v) else "n/a"
                                         for (name, _), v in zip(sides, values, strict=True)}})
    return pd.DataFrame(rows, columns=["metric", *(name for name, _ in sides)])


def config_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Engine settings (first engine of each) that differ between the two sessions."""
    if a.empty or b.empty:
        return pd.DataFrame(columns=["setting", "A", "B"])
    ra, rb = a.iloc[0], b.iloc[0]
    skip = {"engine_id", "pid", "created_unix_s", "label"}

    def text(v: Any) -> str:
        return "n/a" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)

    rows = [{"setting": c, "A": text(ra[c]), "B": text(rb[c])} for c in a.columns
            if c in rb and c not in skip and text(ra[c]) != text(rb[c])]
    return pd.DataFrame(rows, columns=["setting", "A", "B"])


def aligned_series(buckets: pd.DataFrame, view: View, first_step_s: float, label: str,
                   rolling_s: float) -> dict[str, pd.DataFrame]:
    """A session's series with time measured from its first engine step, tagged with ``label``."""
    out: dict[str, pd.DataFrame] = {}
    kv = derive.kv_series(buckets).rename(columns={"value": "kv_usage_frac"})
    q = derive.queue_series(buckets)
    waiting = q[q["state"] == "waiting"].rename(columns={"value": "waiting"})
    running = q[q["state"] == "running"].rename(columns={"value": "running"})
    rates = derive.rate_series(buckets, view, {"generation_tokens": "generation"}, rolling_s)  # a scrape's delta in one bucket is no rate
    hits = derive.hit_rate_series(buckets, view, rolling_s)
    hits = hits[hits["series"].str.startswith("rolling")] if not hits.empty else hits
    for name, df in (("kv", kv), ("waiting", waiting), ("running", running), ("generation", rates),
                     ("hit_rate", hits)):
        df = df.copy()
        df["t_s"] = df["t_s"] - first_step_s
        df["session"] = label
        out[name] = df
    return out
