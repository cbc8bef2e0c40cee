"""Serving numbers as serving is judged: latency splits per request, by prompt length, throughput
and GPU cost per token.

- Prefill is vLLM's own ``prefill_s`` per request (scheduled → first token; queueing excluded).
- Decode per token (inter-token latency) is a request's ``decode_s`` (first → last token) over its
  ``generation_tokens - 1`` gaps; percentiles are over requests. Requests with one token have none.
- By prompt length: requests split at the median prompt length, long = at least ``split_tokens``
  (the Requests page's default split), each bucket with the same percentiles; ``None`` when every
  prompt has the same length.
- Throughput: tokens of the finished requests over the window from the first arrival to the last
  finish.
- Cost: GPU-seconds the engine held (each GPU on which NVML saw one of the session's own processes
  hold memory, from the first to the last such sample), over the tokens the engine processed
  (prompt + generation, both reported). A session where no GPU was held (the CPU engine) or none
  was observed (a client-side benchmark) has ``null`` cost and says why in ``basis``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from profiler.session.reader import Session
from profiler.units import percentile

QUANTILES = (0.5, 0.95, 0.99)
LATENCIES = (("ttft", "ttft_s"), ("e2e", "e2e_s"), ("prefill", "prefill_s"),
             ("decode_per_token", "decode_per_token_s"))
"""(report name, requests column) of each latency the report gives percentiles of."""


def with_decode_per_token(requests: pd.DataFrame) -> pd.DataFrame:
    """``requests`` with ``decode_per_token_s`` = decode_s / (generation_tokens - 1)."""
    out = requests.copy()
    gen = pd.to_numeric(out.get("generation_tokens"), errors="coerce") if "generation_tokens" in out \
        else pd.Series(np.nan, index=out.index)
    dec = pd.to_numeric(out.get("decode_s"), errors="coerce") if "decode_s" in out \
        else pd.Series(np.nan, index=out.index)
    gaps = (gen - 1).where(gen > 1)
    out["decode_per_token_s"] = (dec / gaps).astype(float)
    return out


def percentiles(requests: pd.DataFrame) -> dict[str, float | None]:
    """``{ttft,e2e,prefill,decode_per_token}_p{50,95,99}`` in seconds (None: not measured)."""
    r = with_decode_per_token(requests) if "decode_per_token_s" not in requests else requests
    return {f"{name}_p{int(q * 100)}": (percentile(r[col], q) if col in r and not r.empty else None)
            for name, col in LATENCIES for q in QUANTILES}


def split_tokens(prompt_tokens: pd.Series) -> int | None:
    """Where short prompts end: the median prompt length, kept inside (min, max]; None when every
    prompt has the same length (or none is known)."""
    p = pd.to_numeric(prompt_tokens, errors="coerce").dropna()
    if p.empty or p.min() == p.max():
        return None
    lo, hi = int(p.min()), int(p.max())
    return min(max(int(p.median()), lo + 1), hi)


def by_prompt_length(requests: pd.DataFrame) -> dict[str, Any] | None:
    """``{"split_tokens", "short": {...}, "long": {...}}`` (short: fewer prompt tokens than
    split_tokens); each bucket has ``requests`` and the percentiles of ``percentiles``."""
    if requests.empty or "prompt_tokens" not in requests:
        return None
    split = split_tokens(requests["prompt_tokens"])
    if split is None:
        return None
    r = with_decode_per_token(requests)
    p = pd.to_numeric(r["prompt_tokens"], errors="coerce")
    out: dict[str, Any] = {"split_tokens": split}
    for name, sel in (("short", p < split), ("long", p >= split)):
        out[name] = {"requests": int(sel.sum()), **percentiles(r[sel])}
    return out


def latency(requests: pd.DataFrame) -> dict[str, Any]:
    """The report's ``latency_s`` object."""
    return {**percentiles(requests), "by_prompt_length": by_prompt_length(requests)}


def throughput(requests: pd.DataFrame) -> dict[str, Any]:
    """``{"window_s", "requests_per_s", "output_tokens_per_s", "total_tokens_per_s"}`` over the
    finished requests (first arrival → last finish); None values when not measurable."""
    none = {"window_s": None, "requests_per_s": None, "output_tokens_per_s": None,
            "total_tokens_per_s": None}
    if requests.empty:
        return none
    fin = pd.to_numeric(requests["t_finished_unix_s"], errors="coerce")
    start = fin - pd.to_numeric(requests["e2e_s"], errors="coerce")
    if fin.isna().all() or start.isna().all():
        return none
    window = float(fin.max() - start.min())
    if not window > 0:
        return none
    gen = pd.to_numeric(requests["generation_tokens"], errors="coerce")
    prompt = pd.to_numeric(requests["prompt_tokens"], errors="coerce")
    return {
        "window_s": window,
        "requests_per_s": len(requests) / window,
        "output_tokens_per_s": float(gen.sum()) / window if gen.notna().any() else None,
        "total_tokens_per_s": (float(gen.sum() + prompt.sum()) / window
                               if gen.notna().any() and prompt.notna().any() else None),
    }


_HELD = """
SELECT s.device_index, MIN(s.t_unix_s), MAX(s.t_unix_s)
FROM gpu_process_samples s
WHERE s.used_bytes > 0 AND s.device_index IS NOT NULL
  AND s.pid IN (SELECT pid FROM processes WHERE pid IS NOT NULL)
GROUP BY s.device_index
"""


def cost(session: Session, requests: pd.DataFrame) -> dict[str, Any]:
    """The report's ``cost`` object (see the module docstring)."""
    prompt, gen = session.rows("SELECT SUM(prompt_tokens), SUM(generation_tokens) FROM steps")[0]
    if prompt is None and gen is None and not requests.empty:  # no steps: an imported benchmark
        p = pd.to_numeric(requests["prompt_tokens"], errors="coerce")
        g = pd.to_numeric(requests["generation_tokens"], errors="coerce")
        prompt = int(p.sum()) if p.notna().any() else None
        gen = int(g.sum()) if g.notna().any() else None
    held = [(d, t1 - t0) for d, t0, t1 in session.rows(_HELD) if t0 is not None and t1 is not None]
    out: dict[str, Any] = {"gpu_seconds": None, "gpu_hours_per_million_tokens": None,
                           "gpus": len(held), "prompt_tokens": prompt, "generation_tokens": gen,
                           "basis": None}
    if held:
        gpu_s = float(sum(s for _, s in held))
        tokens = (prompt or 0) + (gen or 0)
        out["gpu_seconds"] = gpu_s
        out["gpu_hours_per_million_tokens"] = (gpu_s / 3600) / (tokens / 1e6) if tokens else None
        out["basis"] = (f"NVML: {len(held)} GPU{'s' if len(held) != 1 else ''} held by the "
                        "session's processes, first to last sample")
        return out
    devices = {str(d) for (d,) in session.rows("SELECT DISTINCT device FROM engines") if d}
    sources = {str(s) for (s,) in session.rows("SELECT DISTINCT source FROM engines") if s}
    if devices and devices <= {"cpu"}:
        out["gpus"] = 0
        out["basis"] = "no GPU held: the engine ran on the CPU"
    elif sources == {"bench"}:
        out["gpus"] = None
        out["basis"] = "client-side benchmark: the server's GPUs were not observed"
    else:
        out["gpus"] = None
        out["basis"] = "no NVML samples of the session's processes holding GPU memory"
    return out
