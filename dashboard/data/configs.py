"""Tables for the configuration sections, from a ``build_report`` dict (no Streamlit): latency
splits, prompt-length buckets, serving side by side, speculative-decoding swing."""

from __future__ import annotations

from typing import Any

import pandas as pd

from profiler.analysis.spec_decode import spec_swing

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


SERVING_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("requests finished", ("requests_finished",)),
    ("TTFT p50 (s)", ("latency_s", "ttft_p50")),
    ("TTFT p95 (s)", ("latency_s", "ttft_p95")),
    ("TTFT p99 (s)", ("latency_s", "ttft_p99")),
    ("decode per token p50 (s)", ("latency_s", "decode_per_token_p50")),
    ("decode per token p95 (s)", ("latency_s", "decode_per_token_p95")),
    ("decode per token p99 (s)", ("latency_s", "decode_per_token_p99")),
    ("end-to-end p95 (s)", ("latency_s", "e2e_p95")),
    ("end-to-end p99 (s)", ("latency_s", "e2e_p99")),
    ("output tokens / s", ("throughput", "output_tokens_per_s")),
    ("requests / s", ("throughput", "requests_per_s")),
    ("GPU-seconds", ("cost", "gpu_seconds")),
    ("GPU-hours per million tokens", ("cost", "gpu_hours_per_million_tokens")),
)
"""Rows of the Compare page's serving table: (label, path into the report)."""


def _at(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = report
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def serving_table(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """Latency tails, throughput and cost of two reports side by side: ``metric``, ``A``, ``B``."""
    return pd.DataFrame([{"metric": label, "A": _at(a, path), "B": _at(b, path)}
                         for label, path in SERVING_ROWS])


def spec_swing_table(a: dict[str, Any], b: dict[str, Any]) -> tuple[pd.DataFrame, str] | None:
    """What speculative decoding changed, when exactly one of the two sessions speculated:
    (rows ``metric``, ``with``, ``without``, ``delta``; which side speculated), else None."""
    if bool(a.get("spec_decode")) == bool(b.get("spec_decode")):
        return None
    with_spec, without, side = (a, b, "A") if a.get("spec_decode") else (b, a, "B")
    return pd.DataFrame(spec_swing(with_spec, without)), side
