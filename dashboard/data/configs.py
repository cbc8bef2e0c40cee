"""Tables for the configuration sections, from a ``build_report`` dict (no Streamlit): latency
splits, prompt-length buckets, serving side by side, speculative-decoding swing."""

from __future__ import annotations

from typing import Any

import pandas as pd

from profiler.analysis.spec_decode import SWING_KEYS, spec_swing

LATENCY_ROWS = (("TTFT", "ttft"), ("end-to-end", "e2e"), ("prefill", "prefill"),
                ("decode per token (ITL)", "decode_per_token"))
"""(display name, report prefix) of the latencies ``latency_s`` gives p50/p95/p99 of."""


def latency_table(lat: dict[str, Any] | None) -> pd.DataFrame:
    """One row per latency: ``metric``, ``p50_s``, ``p95_s``, ``p99_s`` (None: not measured)."""
    lat = lat or {}
    return pd.DataFrame([{"metric": name, **{f"p{q}_s": lat.get(f"{key}_p{q}") for q in (50, 95, 99)}}
                         for name, key in LATENCY_ROWS])


def prompt_length_table(lat: dict[str, Any] | None) -> pd.DataFrame:
    """Short vs long buckets of ``latency_s.by_prompt_length``: one row per (bucket, latency)."""
    split = (lat or {}).get("by_prompt_length")
    if not split:
        return pd.DataFrame(columns=["prompts", "requests", "metric", "p50_s", "p95_s", "p99_s"])
    rows = []
    for bucket, sign in (("short", "<"), ("long", "≥")):
        b = split[bucket]
        for name, key in LATENCY_ROWS:
            rows.append({"prompts": f"{bucket} ({sign} {split['split_tokens']:,} tokens)",
                         "requests": b["requests"], "metric": name,
                         **{f"p{q}_s": b.get(f"{key}_p{q}") for q in (50, 95, 99)}})
    return pd.DataFrame(rows)


SERVING_ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("requests finished", ("requests_finished",), "count"),
    ("TTFT p50", ("latency_s", "ttft_p50"), "s"),
    ("TTFT p95", ("latency_s", "ttft_p95"), "s"),
    ("TTFT p99", ("latency_s", "ttft_p99"), "s"),
    ("decode per token p50", ("latency_s", "decode_per_token_p50"), "s"),
    ("decode per token p95", ("latency_s", "decode_per_token_p95"), "s"),
    ("decode per token p99", ("latency_s", "decode_per_token_p99"), "s"),
    ("end-to-end p95", ("latency_s", "e2e_p95"), "s"),
    ("end-to-end p99", ("latency_s", "e2e_p99"), "s"),
    ("output tokens / s", ("throughput", "output_tokens_per_s"), "rate"),
    ("requests / s", ("throughput", "requests_per_s"), "rate"),
    ("GPU-seconds", ("cost", "gpu_seconds"), "rate"),
    ("GPU-hours per million tokens", ("cost", "gpu_hours_per_million_tokens"), "small"),
)
"""Rows of the Compare page's serving table: (label, path into the report, unit kind)."""


def _at(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = report
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def serving_table(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """Latency tails, throughput and cost of two reports side by side: ``metric``, ``A``, ``B``,
    ``unit`` (how to show the row: ``count``, ``s``, ``rate``, ``small``)."""
    return pd.DataFrame([{"metric": label, "A": _at(a, path), "B": _at(b, path), "unit": unit}
                         for label, path, unit in SERVING_ROWS])


def spec_swing_table(a: dict[str, Any], b: dict[str, Any]) -> tuple[pd.DataFrame, str] | None:
    """What speculative decoding changed, when exactly one of the two sessions speculated:
    (rows ``metric``, ``with``, ``without``, ``delta``; which side speculated), else None."""
    if bool(a.get("spec_decode")) == bool(b.get("spec_decode")):
        return None
    with_spec, without, side = (a, b, "A") if a.get("spec_decode") else (b, a, "B")
    rows = pd.DataFrame(spec_swing(with_spec, without))
    rows["unit"] = [SWING_UNITS[key] for _, key in SWING_KEYS]
    return rows, side


SWING_UNITS = {"acceptance_rate": "frac", "mean_accepted_length": "small", "drafter_weights_bytes": "bytes",
               "weights_bytes": "bytes", "kv_cache_bytes": "bytes", "num_gpu_blocks": "count",
               "peak_kv_usage_frac": "frac", "peak_gpu_used_bytes": "bytes",
               "output_tokens_per_s": "rate", "decode_per_token_p50": "s"}
"""How each ``spec_swing`` row is shown."""
