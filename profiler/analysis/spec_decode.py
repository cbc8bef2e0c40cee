"""Speculative decoding in a session: the report's ``spec_decode`` object and its derived numbers.

``spec_decode`` sums the engine's per-step stats (``spec_decode_steps``): drafts proposed, draft
tokens, accepted tokens, accepted tokens per draft position (position 1 first). The acceptance rate
is accepted / draft tokens; the mean accepted length is 1 + accepted / drafts (vLLM's convention:
each verified draft also yields the target model's own next token). ``null`` when the engine did
not speculate.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from profiler.session.reader import Session
from profiler.units import plausible

_TOTALS = "SELECT COUNT(*), SUM(drafts), SUM(draft_tokens), SUM(accepted_tokens) FROM spec_decode_steps"
_PER_POS = """
SELECT CAST(j.key AS INTEGER), SUM(j.value) FROM spec_decode_steps s, json_each(s.accepted_per_pos) j
WHERE json_valid(s.accepted_per_pos) AND json_type(s.accepted_per_pos) = 'array'
  AND j.type = 'integer' AND j.value >= 0
GROUP BY 1 ORDER BY 1
"""
_BAD_PER_POS = """
SELECT COUNT(*) FROM spec_decode_steps
WHERE accepted_per_pos IS NOT NULL
  AND NOT (json_valid(accepted_per_pos) AND json_type(accepted_per_pos) = 'array')
"""


def config(session: Session) -> dict[str, Any] | None:
    """Details of the first ``spec_decode_config`` event (method, num_speculative_tokens, draft
    model), None when the engine did not speculate."""
    raw = session.scalar("SELECT details_json FROM events WHERE kind = 'spec_decode_config' "
                         "ORDER BY t_unix_s LIMIT 1")
    if raw is None:
        return None
    try:
        details = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return details if isinstance(details, dict) else {}


def drafter_weights_bytes(session: Session) -> int | None:
    """Bytes of the drafter's own weights (rank 0's ``drafter_loaded`` event); None: not measured."""
    raw = session.scalar("SELECT details_json FROM events WHERE kind = 'drafter_loaded' "
                         "ORDER BY t_unix_s LIMIT 1")
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("drafter_weights_bytes")
    except (TypeError, ValueError, AttributeError):
        return None
    n = plausible(value, 0, 2**50)
    return None if n is None else int(n)


def spec_decode_report(session: Session, notes: list[str] | None = None) -> dict[str, Any] | None:
    """``{"method", "drafts", "draft_tokens", "accepted_tokens", "acceptance_rate",
    "accepted_per_position"}`` or None when the session has no speculative decoding."""
    cfg = config(session)
    rows, drafts, draft_tokens, accepted = session.rows(_TOTALS)[0]
    if cfg is None and not rows:
        return None
    if rows == 0:  # configured, but no step proposed anything
        drafts = draft_tokens = accepted = 0
    per_pos: list[int] = []
    for pos, total in session.rows(_PER_POS):
        if pos is None or pos < 0 or pos > 1024:
            continue
        per_pos.extend([0] * (pos + 1 - len(per_pos)))
        per_pos[pos] = int(total or 0)
    bad = session.scalar(_BAD_PER_POS) or 0
    if bad and notes is not None:
        notes.append(f"spec_decode_steps.accepted_per_pos: ignored {bad} values (not a JSON list)")
    rate = accepted / draft_tokens if draft_tokens and accepted is not None else None
    if rate is not None and rate > 1:
        if notes is not None:
            notes.append(f"spec_decode: {accepted} accepted tokens exceed {draft_tokens} draft "
                         "tokens; acceptance rate left out")
        rate = None
    return {
        "method": (cfg or {}).get("method"),
        "drafts": drafts,
        "draft_tokens": draft_tokens,
        "accepted_tokens": accepted,
        "acceptance_rate": rate,
        "accepted_per_position": per_pos,
    }


def mean_accepted_length(spec: dict[str, Any] | None) -> float | None:
    """1 + accepted tokens per draft (vLLM's mean acceptance length); None when nothing drafted."""
    if not spec or not spec.get("drafts") or spec.get("accepted_tokens") is None:
        return None
    return 1.0 + spec["accepted_tokens"] / spec["drafts"]


def position_rates(spec: dict[str, Any] | None) -> list[float]:
    """Share of drafts whose token at position 1, 2, ... was accepted."""
    if not spec or not spec.get("drafts"):
        return []
    return [n / spec["drafts"] for n in spec.get("accepted_per_position") or []]


SWING_KEYS: tuple[tuple[str, str], ...] = (
    ("acceptance rate", "acceptance_rate"),
    ("mean accepted length (tokens)", "mean_accepted_length"),
    ("drafter weights (bytes)", "drafter_weights_bytes"),
    ("model weights (bytes)", "weights_bytes"),
    ("KV cache (bytes)", "kv_cache_bytes"),
    ("KV blocks", "num_gpu_blocks"),
    ("peak KV usage", "peak_kv_usage_frac"),
    ("peak GPU memory (bytes)", "peak_gpu_used_bytes"),
    ("generation throughput (tokens/s)", "output_tokens_per_s"),
    ("decode time per token p50 (s)", "decode_per_token_p50"),
)
"""What ``spec_swing`` compares, in display order (label, key)."""


def swing_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one report that speculative decoding moves (see ``SWING_KEYS``)."""
    spec = report.get("spec_decode")
    gpus = report.get("gpus") or []
    peaks = [g.get("peak_used_bytes") for g in gpus if g.get("peak_used_bytes") is not None]
    mem = report.get("memory") or {}
    return {
        "acceptance_rate": (spec or {}).get("acceptance_rate"),
        "mean_accepted_length": mean_accepted_length(spec),
        "drafter_weights_bytes": mem.get("drafter_weights_bytes"),
        "weights_bytes": mem.get("weights_bytes"),
        "kv_cache_bytes": mem.get("kv_cache_bytes"),
        "num_gpu_blocks": (report.get("engine") or {}).get("num_gpu_blocks"),
        "peak_kv_usage_frac": (report.get("kv_cache") or {}).get("peak_usage_frac"),
        "peak_gpu_used_bytes": max(peaks) if peaks else None,
        "output_tokens_per_s": (report.get("throughput") or {}).get("output_tokens_per_s"),
        "decode_per_token_p50": (report.get("latency_s") or {}).get("decode_per_token_p50"),
    }


def spec_swing(with_spec: dict[str, Any], without: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"metric", "with", "without", "delta"}``: what speculative decoding changed between a
    run with it and one without (delta None where either side was not measured)."""
    a, b = swing_numbers(with_spec), swing_numbers(without)
    rows = []
    for label, key in SWING_KEYS:
        va, vb = a[key], b[key]
        delta = va - vb if isinstance(va, int | float) and isinstance(vb, int | float) else None
        rows.append({"metric": label, "with": va, "without": vb, "delta": delta})
    return rows


def by_prompt_length(session: Session, requests: pd.DataFrame | None, split: int | None) -> dict[str, Any] | None:
    """Speculative decoding on short vs long prompts: each step's stats go to the bucket whose
    prompts alone were in flight at that step (from the finished requests' arrival and finish
    times); steps with both kinds in flight count as ``mixed_steps``. ``split`` is the report's
    ``latency_s.by_prompt_length.split_tokens`` (short: fewer prompt tokens). None without
    speculative decoding or a split."""
    if split is None or requests is None or len(requests) == 0:
        return None
    steps = session.rows("SELECT t_unix_s, drafts, draft_tokens, accepted_tokens "
                         "FROM spec_decode_steps WHERE t_unix_s IS NOT NULL ORDER BY t_unix_s")
    if not steps:
        return None
    fin = pd.to_numeric(requests["t_finished_unix_s"], errors="coerce").to_numpy(dtype=float)
    arr = fin - pd.to_numeric(requests["e2e_s"], errors="coerce").to_numpy(dtype=float)
    prompt = pd.to_numeric(requests["prompt_tokens"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(fin) & np.isfinite(arr) & np.isfinite(prompt)
    t = np.array([s[0] for s in steps], dtype=float)

    def in_flight(sel: Any) -> Any:
        a, f = np.sort(arr[ok & sel]), np.sort(fin[ok & sel])
        return np.searchsorted(a, t, side="right") - np.searchsorted(f, t, side="left")

    short, long_ = in_flight(prompt < split), in_flight(prompt >= split)
    out: dict[str, Any] = {"split_tokens": split, "mixed_steps": int(((short > 0) & (long_ > 0)).sum())}
    for name, sel in (("short", (short > 0) & (long_ == 0)), ("long", (long_ > 0) & (short == 0))):
        rows = [s for s, keep in zip(steps, sel, strict=True) if keep]
        drafts = sum(r[1] or 0 for r in rows)
        tokens = sum(r[2] or 0 for r in rows)
        accepted = sum(r[3] or 0 for r in rows)
        out[name] = {"steps": len(rows), "drafts": drafts, "draft_tokens": tokens,
                     "accepted_tokens": accepted,
                     "acceptance_rate": accepted / tokens if tokens else None,
                     "mean_accepted_length": 1 + accepted / drafts if drafts else None}
    return out
