"""Diagnosis at token granularity: shared prefixes shorter than one KV block (PREFIX_BELOW_BLOCK)."""

from __future__ import annotations

import numpy as np

from profiler.analysis import whatif
from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.diagnosis.findings import WARNING, EngineView, Finding
from profiler.errors import NotAnalysable
from profiler.session.reader import Session


def shared_prefix_tokens(trace: whatif.AccessTrace) -> np.ndarray:
    """Per request: tokens of its prompt (in whole chunks) that an earlier request began with."""
    seen: set[int] = set()
    out = np.zeros(len(trace.requests), dtype=np.int64)
    for k, req in enumerate(trace.requests):
        n = 0
        for h in req.hashes.tolist():
            if h not in seen:
                break
            n += 1
        out[k] = n * trace.block_size
        seen.update(req.hashes.tolist())
    return out


def prefix_below_block(view: EngineView, session: Session) -> list[Finding]:
    """Prefix-cache queries but no hits, because the prompts share less than one block."""
    bs = view.block_size
    s = view.steps
    if not bs or s.empty or view.get("enable_prefix_caching") == 0:
        return []
    queries = float(s["prefix_queries_tokens"].fillna(0).sum())
    if queries < th.BELOW_BLOCK_MIN_QUERY_TOKENS or s["prefix_hits_tokens"].isna().all():
        return []
    if float(s["prefix_hits_tokens"].fillna(0).sum()) > 0:
        return []
    try:
        points = whatif.block_size_curve(session, engine_id=view.engine_id)
        fine = whatif.chunk_trace(session, _chunk_tokens(session), view.engine_id)
    except NotAnalysable:
        return []
    smaller = [p for p in points if p.block_size < bs and p.hit_rate is not None
               and p.hit_rate >= th.BELOW_BLOCK_MIN_HIT_FRAC]
    if not smaller:
        return []
    shared = shared_prefix_tokens(fine)
    sharing = shared[shared > 0]
    if not len(sharing) or int(sharing.max()) >= bs:
        return []
    best = max(smaller, key=lambda p: p.block_size)  # the largest size that catches it
    typical = int(np.median(sharing))
    times = np.array([r.t_unix_s for r in fine.requests])[shared > 0] - view.t0_unix_s
    msg = (f"the prefix cache was queried for {int(queries):,} prompt tokens and hit none, yet "
           f"{len(sharing)} of {len(fine.requests)} requests begin with a prefix another request "
           f"already sent ({typical} tokens typical, {int(sharing.max())} at most): shorter than "
           f"one {bs}-token block, and vLLM caches only full blocks")
    rec = (f"--block-size {best.block_size}: at the same KV memory ({best.num_blocks} blocks of "
           f"{best.block_size}) the prefix what-if predicts a {best.hit_rate:.1%} hit rate "
           f"(measured 0.0% at {bs})")
    return [Finding("PREFIX_BELOW_BLOCK", WARNING, float(times.min()), float(times.max()), msg,
                    rec, view.engine_id,
                    {"queries_tokens": int(queries), "hits_tokens": 0, "block_size": bs,
                     "shared_prefix_tokens_p50": typical,
                     "shared_prefix_tokens_max": int(sharing.max()),
                     "sharing_requests": int(len(sharing)),
                     "catching_block_size": best.block_size,
                     "predicted_hit_rate": best.hit_rate},
                    {"block_size": best.block_size})]


def _chunk_tokens(session: Session) -> int:
    size = session.scalar("SELECT MIN(chunk_tokens) FROM prompt_chunks")
    if not size:
        raise NotAnalysable("no prompt chunks")
    return int(size)


RULES = (prefix_below_block,)
"""Per-engine rules of this module."""
