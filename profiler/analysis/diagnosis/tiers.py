"""Diagnosis across KV tiers: a tier written but never read, loads slower than recomputing, a tier
too small for the prefixes that recur (what-if over the GPU and the tier together)."""

from __future__ import annotations

import math
from typing import Any

from profiler.analysis import tiers, whatif
from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.diagnosis.findings import (
    INFO,
    WARNING,
    EngineView,
    Finding,
    kv_bytes_per_block,
)
from profiler.analysis.preemption import prefill_rate
from profiler.errors import NotAnalysable
from profiler.session.reader import Session
from profiler.units import GIB, fmt_bytes


def _tier_entries(session: Session) -> list[dict[str, Any]]:
    return [t for t in tiers.kv_tiers(session) if t["medium"] != "GPU"]


def _span(session: Session, view: EngineView, medium: str) -> tuple[float | None, float | None]:
    t0, t1 = session.rows("SELECT MIN(t_unix_s), MAX(t_unix_s) FROM tier_samples WHERE medium = ?",
                          (medium,))[0]
    return (t0 - view.t0_unix_s if t0 is not None else None,
            t1 - view.t0_unix_s if t1 is not None else None)


def bytes_per_token(session: Session, view: EngineView) -> float | None:
    """KV bytes of one token summed over the engine's workers (what a tier moves per token)."""
    per_block = kv_bytes_per_block(session, view)
    bs = view.block_size
    if not per_block or not bs:
        return None
    workers = int(view.get("tensor_parallel_size") or 1) * int(view.get("pipeline_parallel_size") or 1)
    return per_block * workers / bs


def tier_write_only(view: EngineView, session: Session) -> list[Finding]:
    """A tier that stores and stores but is never read back."""
    out = []
    for t in _tier_entries(session):
        stored = t["stored_bytes"] or 0
        if stored < th.TIER_MIN_STORED_BYTES:
            continue
        loaded = t["loaded_bytes"] or 0
        hits, queries = t["hits_tokens"], t["queries_tokens"]
        if loaded > th.TIER_WRITE_ONLY_FRAC * stored:
            continue
        if hits and queries and hits > th.TIER_WRITE_ONLY_FRAC * queries:
            continue
        t0, t1 = _span(session, view, t["medium"])
        q = f"{hits or 0:,} hit tokens of {queries:,} looked up" if queries is not None else \
            "tier hits not reported"
        msg = (f"{t['medium']} tier stored {fmt_bytes(stored)} but loaded back {fmt_bytes(loaded)} "
               f"({loaded / stored:.1%}); {q}: every store costs transfer bandwidth and memory for "
               "no reuse")
        rec = (f"prefixes do not come back after leaving the GPU cache (or leave the {t['medium']} "
               "tier first, see TIER_TOO_SMALL): turn the tier off (drop --kv-offloading-size) "
               "unless the workload's reuse changes")
        out.append(Finding("TIER_WRITE_ONLY", WARNING, t0, t1, msg, rec, view.engine_id,
                           {"medium": t["medium"], "stored_bytes": stored, "loaded_bytes": loaded,
                            "hits_tokens": hits, "queries_tokens": queries}))
    return out


def tier_slow_load(view: EngineView, session: Session) -> list[Finding]:
    """Loading a prefix from the tier takes longer than prefilling it again."""
    per_token = bytes_per_token(session, view)
    rate = prefill_rate(session, view.engine_id)
    if not per_token or not rate:
        return []
    out = []
    df = tiers.tier_samples(session)
    for t in _tier_entries(session):
        load_s = float(df.loc[df["medium"] == t["medium"], "load_s"].fillna(0).sum())
        bw = t["load_bytes_per_s"]
        if not bw or load_s < th.TIER_MIN_LOAD_S:
            continue
        load_tokens_per_s = bw / per_token
        if load_tokens_per_s >= th.TIER_SLOW_LOAD_RATIO * rate:
            continue
        t0, t1 = _span(session, view, t["medium"])
        msg = (f"loads from the {t['medium']} tier ran at {fmt_bytes(bw)}/s = "
               f"{load_tokens_per_s:,.0f} tokens/s ({fmt_bytes(per_token)} of KV per token), "
               f"slower than this session's prefill at {rate:,.0f} tokens/s: recomputing a "
               "prefix beats reloading it")
        rec = (f"a tier hit costs {rate / load_tokens_per_s:.1f}× the prefill it saves: keep the "
               "prefixes on the GPU (more KV blocks), or move the tier to faster memory / "
               "interconnect; as it stands, turning it off is faster")
        out.append(Finding("TIER_SLOW_LOAD", WARNING, t0, t1, msg, rec, view.engine_id,
                           {"medium": t["medium"], "load_bytes_per_s": bw,
                            "load_tokens_per_s": load_tokens_per_s, "prefill_tokens_per_s": rate,
                            "kv_bytes_per_token": per_token}))
    return out


def tier_too_small(view: EngineView, session: Session) -> list[Finding]:
    """The GPU cache and the tier together still lose the prefixes that recur.

    The native CPU tier stores a copy of every block it gets, so together the two hold the most
    recent ``max(GPU, CPU)`` blocks: the miss-ratio curve at that size is what they can keep.
    """
    have = view.num_blocks
    per_block = kv_bytes_per_block(session, view)
    if not have or not per_block:
        return []
    try:
        w = whatif.analyse(session, view.engine_id)
    except NotAnalysable:
        return []
    if w.trace is None or w.curve.max_hit_rate is None:
        return []
    c, best = w.curve, w.curve.max_hit_rate
    workers = int(view.get("tensor_parallel_size") or 1) * int(view.get("pipeline_parallel_size") or 1)
    out = []
    for t in _tier_entries(session):
        cap = tiers.capacity_bytes(session, t["medium"])
        if not cap:
            continue
        tier_blocks = int(cap // (per_block * workers))
        together = max(have, tier_blocks + 1)
        kept = c.hit_rate(together)
        if (kept is None or best < th.THRASH_MIN_REUSE_FRAC or kept > th.THRASH_MAX_KEPT_FRAC * best
                or best - kept < th.THRASH_MIN_LOST_FRAC):
            continue
        need = c.blocks_for(th.THRASH_TARGET_OF_MAX)
        if need is None:
            continue
        need_bytes = (need - 1) * per_block * workers
        gib = math.ceil(need_bytes / GIB * 10) / 10
        t0, t1 = _span(session, view, t["medium"])
        msg = (f"GPU ({have} blocks) and {t['medium']} tier ({fmt_bytes(cap)} = {tier_blocks:,} "
               f"blocks) together keep a {kept:.1%} prefix hit rate (what-if), against {best:.1%} "
               "with room for every recurring prefix")
        rec = (f"keeping {th.THRASH_TARGET_OF_MAX:.0%} of the reusable prefixes needs ≥ {need:,} "
               f"blocks together: --kv-offloading-size {gib:g} (GiB, {fmt_bytes(need_bytes)})")
        out.append(Finding("TIER_TOO_SMALL", INFO if t["loaded_bytes"] else WARNING, t0, t1, msg,
                           rec, view.engine_id,
                           {"medium": t["medium"], "capacity_bytes": cap, "tier_blocks": tier_blocks,
                            "gpu_blocks": have, "predicted_hit_rate": kept, "max_hit_rate": best,
                            "needed_blocks": need},
                           {"kv_offloading_size": gib}))
    return out


RULES = (tier_write_only, tier_slow_load, tier_too_small)
"""Per-engine rules of this module."""
