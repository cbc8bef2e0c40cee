"""A prediction beside its measurement: the Simulate page's numbers for a setting next to what a
session recorded at that setting (a re-run), and next to what the model says at the recorded one."""

from __future__ import annotations

from typing import Any

import pandas as pd

from profiler.analysis.simulate import Model, Prediction, Settings
from profiler.units import fmt_pct, fmt_s, is_number

ROWS: tuple[tuple[str, str, str], ...] = (
    ("preemptions", "preemptions", "count"),
    ("preempted_requests", "requests preempted", "count"),
    ("queued_p50_s", "queue time p50", "s"),
    ("e2e_p50_s", "end-to-end p50", "s"),
    ("e2e_p95_s", "end-to-end p95", "s"),
    ("peak_kv_usage_frac", "peak KV usage", "pct"),
    ("prefix_hit_rate", "prefix hit rate (what-if curve)", "pct"),
    ("model_hit_rate", "prefix hit rate (scheduler model)", "pct"),
)
"""(Prediction field, label, unit) of every predicted number."""


def fmt_value(v: Any, unit: str) -> str:
    """A predicted or measured number as text ("n/a" when not known)."""
    if not is_number(v):
        return "n/a"
    if unit == "s":
        return fmt_s(v)
    if unit == "pct":
        return fmt_pct(v)
    return f"{int(v):,}"


def measured_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """A session's report as the prediction's fields (what it measured)."""
    lat = report.get("latency_s") or {}
    return {"preemptions": report.get("preemptions"), "preempted_requests": None,
            "queued_p50_s": report.get("queued_p50_s"), "e2e_p50_s": lat.get("e2e_p50"),
            "e2e_p95_s": lat.get("e2e_p95"), "peak_kv_usage_frac": (report.get("kv_cache") or {}).get("peak_usage_frac"),
            "prefix_hit_rate": (report.get("prefix_cache") or {}).get("hit_rate"), "model_hit_rate": None}


def table(columns: dict[str, dict[str, Any] | Prediction]) -> pd.DataFrame:
    """One row per predicted number, one text column per source (a Prediction or a dict of fields)."""
    out: dict[str, list[str]] = {"": [label for _, label, _ in ROWS]}
    for name, src in columns.items():
        values = src if isinstance(src, dict) else {f: getattr(src, f) for f, _, _ in ROWS}
        out[name] = [fmt_value(values.get(f), unit) for f, _, unit in ROWS]
    return pd.DataFrame(out)


def settings_text(s: Settings) -> str:
    """``600 blocks, max_num_seqs 256, budget 2048 tokens``."""
    return f"{s.num_blocks:,} blocks, max_num_seqs {s.max_num_seqs}, budget {s.max_num_batched_tokens:,} tokens"


def settings_of(report: dict[str, Any], recorded: Settings) -> Settings | None:
    """The scheduler settings a session ran with (None when it has no cache size)."""
    e = report.get("engine") or {}
    if not is_number(e.get("num_gpu_blocks")):
        return None
    seqs = e.get("max_num_seqs")
    return Settings(int(e["num_gpu_blocks"]), int(seqs) if is_number(seqs) else recorded.max_num_seqs,
                    recorded.max_num_batched_tokens)


def rerun_check(model: Model, report_b: dict[str, Any], requests_b: pd.DataFrame | None = None
                ) -> tuple[Settings, Prediction, pd.DataFrame] | None:
    """A's model at B's settings beside B's measurement (None when B has no cache size). The queue
    p50 of B comes from its requests when given."""
    s = settings_of(report_b, model.demand.recorded)
    if s is None:
        return None
    p = model.predict(s)
    measured = measured_numbers(report_b)
    if requests_b is not None and not requests_b.empty and "queued_s" in requests_b:
        q = requests_b["queued_s"].dropna()
        measured["queued_p50_s"] = float(q.quantile(0.5)) if len(q) else None
        pre = requests_b["preemptions"].dropna() if "preemptions" in requests_b else pd.Series(dtype=float)
        measured["preempted_requests"] = int((pre > 0).sum()) if len(pre) == len(requests_b) else None
    return s, p, table({"predicted from A": p, "measured in B": measured})


def times_note(model: Model, p: Prediction) -> str | None:
    """Why the predicted times may be off (None when the prediction stays within what was fitted)."""
    d = model.demand
    if not model.times_extrapolated(p):
        return None
    return (f"Times are extrapolated: this session's steps had at most {d.fitted_max_batch} requests in a "
            f"batch, the prediction runs up to {p.max_batch}, and a step's cost per request could not be "
            "measured beyond that (read the times as a lower bound). They also assume the machine is as "
            "loaded as when the session was recorded. Preemptions, KV usage and hit rates do not depend "
            "on step times.")
