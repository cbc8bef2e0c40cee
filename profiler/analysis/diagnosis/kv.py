"""Diagnosis rules for KV-cache capacity and scheduling: saturation, preemption, thrash, queueing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis import tiers, whatif
from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.diagnosis.findings import (
    INFO,
    WARNING,
    EngineView,
    Finding,
    kv_bytes_per_block,
    size_advice,
    span,
    startup_row,
)
from profiler.analysis.diagnosis.kv_groups import GroupDemand, engine_groups, group_demands
from profiler.errors import NotAnalysable
from profiler.session.reader import Session
from profiler.units import fmt_bytes

_REQUEST_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
"""vLLM appends ``-<8 hex>`` to the user's request id internally (prompt-block rows carry it)."""


@dataclass(frozen=True)
class Demand:
    """KV blocks the engine needs to run its batch without waiting for memory."""

    seqs: int
    """Sequences that should run at once: min(max_num_seqs, peak requests in the system)."""
    blocks_per_seq: int
    """Blocks a request holds beyond shared prefix blocks (p90 over requests)."""
    total_blocks_per_seq: int
    """Blocks a request holds counting its prefix (p90 over requests)."""
    shared_blocks: int
    """Distinct prompt blocks that several requests share (held once)."""
    groups: tuple[GroupDemand, ...] = field(default=())
    """Each KV-cache group's share, for an engine with more than one group (the fields above are
    then their sums: the groups share one pool)."""

    @property
    def blocks(self) -> int:
        """Peak demand in blocks."""
        return self.shared_blocks + self.seqs * self.blocks_per_seq

    @property
    def needed_blocks(self) -> int:
        """num_gpu_blocks that holds the demand at KV_TARGET_FRAC usage (plus vLLM's null block)."""
        return math.ceil(self.blocks / th.KV_TARGET_FRAC) + 1

    def seqs_that_fit(self, num_blocks: int) -> int:
        """Largest batch the current cache holds at KV_TARGET_FRAC usage."""
        room = (num_blocks - 1) * th.KV_TARGET_FRAC
        sharing = (room - self.shared_blocks) // max(self.blocks_per_seq, 1)
        alone = room // max(self.total_blocks_per_seq, 1)  # when few share a prefix at a time
        return max(int(sharing), int(alone), 1)


def shared_prompt_blocks(session: Session, engine_id: int) -> int | None:
    """Distinct prompt-block hashes that appear in at least two requests (None: not recorded)."""
    df = session.table("prompt_blocks", "WHERE engine_id = ?", (engine_id,))
    if df.empty:
        return None
    all_hashes = np.frombuffer(b"".join(raw or b"" for raw in df["block_hashes"]), dtype="<i8")
    _, counts = np.unique(all_hashes, return_counts=True)
    return int((counts >= 2).sum())


def demand(view: EngineView, session: Session) -> Demand | None:
    """Peak KV demand from the finished requests (None when sizes are unknown)."""
    bs, r = view.block_size, view.requests
    if not bs or r.empty or r["prompt_tokens"].isna().all():
        return None
    total = np.ceil((r["prompt_tokens"].fillna(0) + r["generation_tokens"].fillna(0) - 1) / bs)
    cached = (r["cached_tokens"].fillna(0) // bs)
    per_seq = int(np.ceil(np.percentile(total - cached, 90)))
    shared = shared_prompt_blocks(session, view.engine_id)
    if shared is None:
        shared = int(np.percentile(cached, 90))
    s = view.steps
    peak = int((s["running"].fillna(0) + s["waiting"].fillna(0)).max()) if not s.empty else 1
    max_seqs = view.get("max_num_seqs")
    seqs = min(int(max_seqs), peak) if max_seqs else peak
    total_per_seq = int(np.ceil(np.percentile(total, 90)))
    groups = engine_groups(session, view.engine_id)
    if len(groups) > 1:
        per_group = group_demands(groups, r, max(seqs, 1), shared)
        return Demand(max(seqs, 1), sum(g.blocks_per_seq for g in per_group),
                      sum(g.total_blocks_per_seq for g in per_group),
                      sum(g.shared_blocks for g in per_group), tuple(per_group))
    return Demand(max(seqs, 1), max(per_seq, 1), max(total_per_seq, 1), shared)


def _capacity_recommendation(view: EngineView, session: Session, d: Demand) -> tuple[str, dict[str, Any]]:
    bs, have = view.block_size, view.num_blocks or 0
    advice, settings = size_advice(view, session, d.needed_blocks)
    # One recommendation: the cache size. Shrinking max_num_seqs to what the cache holds
    # (d.seqs_that_fit) trades the whole batch for memory; the Simulate page shows its cost.
    text = (f"peak demand {d.seqs} sequences × {d.blocks_per_seq} blocks + {d.shared_blocks} shared "
            f"prefix blocks = {d.blocks} blocks ({d.blocks * (bs or 0):,} tokens) needs ≥ "
            f"{d.needed_blocks} blocks of {bs} at {th.KV_TARGET_FRAC:.0%} use (have {have}): "
            f"{advice}")
    if d.groups:
        text += (f" (the {len(d.groups)} KV-cache groups share the pool: "
                 + "; ".join(g.describe() for g in d.groups) + ")")
    return text, settings


def _group_metrics(d: Demand | None) -> list[dict[str, Any]]:
    """Per-group demand for a finding's metrics ([] for a one-group cache)."""
    if d is None:
        return []
    return [{"group_index": g.index, "kind": g.kind, "blocks_per_seq": g.blocks_per_seq,
             "shared_blocks": g.shared_blocks, "demand_blocks": g.blocks} for g in d.groups]


def _range(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"only {lo}" if lo == hi else f"{lo}–{hi}"


def kv_saturation(view: EngineView, session: Session) -> list[Finding]:
    """KV usage at the ceiling with requests waiting while the batch is below max_num_seqs."""
    s = view.steps
    if s.empty or s["kv_usage_frac"].isna().all():
        return []
    max_seqs = view.get("max_num_seqs") or math.inf
    mask = (s["kv_usage_frac"] >= th.KV_CEILING_FRAC) & (s["waiting"] > 0) & (s["running"] < max_seqs)
    sp = span(view, mask)
    if not sp.sustained:
        return []
    hit = s[mask]
    d = demand(view, session)
    rec, settings = _capacity_recommendation(view, session, d) if d else (None, {})
    msg = (f"KV cache at ≥{th.KV_CEILING_FRAC:.0%} of {view.num_blocks} blocks with requests waiting "
           f"for {sp.busy_frac:.0%} of busy time ({sp.steps} steps, {sp.duration_s:.1f} s): up to "
           f"{int(hit['waiting'].max())} requests waited while {_range(hit['running'])} ran "
           f"(max_num_seqs {view.get('max_num_seqs')})")
    return [Finding("KV_SATURATION", sp.severity, sp.t_start_s, sp.t_end_s, msg, rec, view.engine_id,
                    {"busy_frac": sp.busy_frac, "steps": sp.steps, "duration_s": sp.duration_s,
                     "max_waiting": int(hit["waiting"].max()),
                     "demand_blocks": d.blocks if d else None,
                     "needed_blocks": d.needed_blocks if d else None,
                     "seqs_that_fit": d.seqs_that_fit(view.num_blocks or 0) if d else None,
                     "groups": _group_metrics(d)}, settings)]


def preemption_storm(view: EngineView, session: Session) -> list[Finding]:
    """Preemptions at a sustained rate, or requests preempted repeatedly."""
    s, r = view.steps, view.requests
    if s.empty or s["preemptions"].isna().all():
        return []
    total = int(s["preemptions"].sum())
    if total < th.PREEMPTION_MIN_COUNT:
        return []
    pre = r["preemptions"].dropna() if not r.empty else pd.Series(dtype=float)
    preempted_reqs: int | None = None
    worst: int | None = None
    if pre.empty:  # no per-request counts (scraped, or vLLM 0.26): preemptions per finished request
        n_requests = len(r) if not r.empty else int(s["finished"].fillna(0).sum())
        frac = total / n_requests if n_requests else 1.0
        storm = frac >= th.PREEMPTED_REQUESTS_FRAC
        who = f"for {n_requests} finished requests ({frac:.2f} per request)"
    else:
        preempted_reqs = int((pre > 0).sum())
        worst = int(pre.max())
        n_requests = len(r)
        frac = preempted_reqs / n_requests
        storm = frac >= th.PREEMPTED_REQUESTS_FRAC or worst >= th.PREEMPTION_REPEAT_COUNT
        n_worst = int((pre == worst).sum())
        who = f"hit {preempted_reqs} of {n_requests} requests ({frac:.0%})" + (
            f", {'one' if n_worst == 1 else n_worst} of them {worst}×" if worst > 1 else "")
    if not storm:
        return []
    recomputed = int((s["preempted_prefix_queries_tokens"].fillna(0)
                      - s["preempted_prefix_hits_tokens"].fillna(0)).sum())
    prompt = int(s["prefix_queries_tokens"].fillna(0).sum())
    recompute_frac = recomputed / prompt if prompt else 0.0
    busy = view.busy_s
    rate = total / busy if busy > 0 else None
    hit = s[s["preemptions"] > 0]
    t0 = float(hit["rel_s"].min())
    t1 = float((hit["rel_s"] + hit["dt_s"]).max())
    severity = "critical" if recompute_frac >= th.PREEMPTION_CRITICAL_RECOMPUTE_FRAC else WARNING
    d = demand(view, session)
    rec, settings = _capacity_recommendation(view, session, d) if d else (None, {})
    recompute = (f"{recomputed:,} prompt tokens were recomputed after preemption "
                 f"({recompute_frac:.0%} of {prompt:,} prompt tokens)"
                 if s["preempted_prefix_queries_tokens"].notna().any()
                 else "recomputed tokens not reported by this source")
    msg = (f"{total} preemptions ({rate:.1f}/s of busy time) {who}; {recompute}" if rate is not None
           else f"{total} preemptions {who}; {recompute}")
    return [Finding("PREEMPTION_STORM", severity, t0, t1, msg, rec, view.engine_id,
                    {"preemptions": total, "preemptions_per_s": rate,
                     "preempted_requests": preempted_reqs, "max_preemptions_per_request": worst,
                     "recomputed_tokens": recomputed, "recomputed_frac": recompute_frac,
                     "groups": _group_metrics(d)}, settings)]


@dataclass(frozen=True)
class Restores:
    """KV-event evidence of thrash for one engine (from attach's KV-event summary)."""

    restored_blocks: int
    stored_blocks: int
    t_start_unix_s: float | None
    t_end_unix_s: float | None
    median_evicted_s: float | None


def kv_event_restores(session: Session, engine_id: int) -> Restores | None:
    """Re-stores of evicted hashes on ``engine_id``; None without KV events (or attach support)."""
    try:
        from profiler.analysis.kv_events import kv_event_summary
    except ImportError:
        return None
    summary = kv_event_summary(session)
    if not summary.has_events or engine_id not in summary.engine_ids:
        return None
    r = summary.restores
    r = r[r["engine_id"] == engine_id] if len(r) else r
    # stores are counted per session; with one engine they are this engine's
    stored = summary.stored_blocks if len(summary.engine_ids) == 1 else None
    if not stored:
        return None
    return Restores(len(r), stored, float(r["t_unix_s"].min()) if len(r) else None,
                    float(r["t_unix_s"].max()) if len(r) else None,
                    float(np.median(r["evicted_s"])) if len(r) else None)


def prefix_thrash(view: EngineView, session: Session) -> list[Finding]:
    """Recurring prefixes evicted before reuse: measured hits far below an unbounded cache's."""
    if view.get("enable_prefix_caching") == 0:
        return []
    restores = kv_event_restores(session, view.engine_id)
    try:
        w = whatif.analyse(session, view.engine_id)
    except ValueError:
        w = None
    if w is None or w.trace is None or w.actual.hit_rate is None or w.curve.max_hit_rate is None:
        return _thrash_from_events(view, session, restores, w.curve if w else None)
    c, gpu_rate, best = w.curve, w.actual.hit_rate, w.curve.max_hit_rate
    # hits a tier behind the GPU (CPU offload, LMCache, ...) supplied were not lost: count them
    tier_hits = tiers.tier_hit_tokens(session, view.engine_id)
    queries = float(view.steps["prefix_queries_tokens"].fillna(0).sum())
    measured = min(gpu_rate + tier_hits / queries, 1.0) if tier_hits and queries else gpu_rate
    lost = best - measured
    if (best < th.THRASH_MIN_REUSE_FRAC or measured > th.THRASH_MAX_KEPT_FRAC * best
            or lost < th.THRASH_MIN_LOST_FRAC):
        return []
    have = view.num_blocks or 0
    evicted = c.evicted_requests(have)
    t0, t1 = _recompute_range(view, [r for r, e in zip(w.trace.requests, evicted, strict=True) if e])
    need = _with_concurrency(session, view, c.blocks_for(th.THRASH_TARGET_OF_MAX),
                             th.THRASH_TARGET_OF_MAX * best)
    tiered = (f" (GPU {gpu_rate:.1%} + {tier_hits:,} tokens from the tiers behind it)"
              if tier_hits else "")
    msg = (f"prompt prefixes recur but are evicted before reuse: prefix hit rate {measured:.1%}"
           f"{tiered} measured vs {best:.1%} with a cache that kept every prefix; {int(evicted.sum())} of "
           f"{len(w.trace.requests)} requests recomputed evicted prefix blocks "
           f"(≈{lost * c.query_tokens:,.0f} tokens)")
    if restores is not None:
        msg += (f"; KV events: {restores.restored_blocks:,} re-stores of evicted blocks in "
                f"{restores.stored_blocks:,} stores")
    rec, settings = None, {}
    if need is not None and need > have:
        advice, settings = size_advice(view, session, need)
        rec = (f"keeping {th.THRASH_TARGET_OF_MAX:.0%} of the reusable prefixes needs ≥ {need} blocks "
               f"of {c.block_size} (have {have}; predicted hit rate {c.hit_rate(need):.1%}): {advice}")
    elif need is not None:
        rec = (f"the LRU model keeps the prefixes at {have} blocks (predicted {c.hit_rate(have):.1%}): "
               "the loss comes from blocks held by running requests; lower --max-num-seqs or add KV")
    return [Finding("PREFIX_THRASH", WARNING, t0, t1, msg, rec, view.engine_id,
                    {"measured_hit_rate": measured, "gpu_hit_rate": gpu_rate,
                     "tier_hits_tokens": tier_hits, "max_hit_rate": best,
                     "predicted_hit_rate": c.hit_rate(have) if have else None,
                     "needed_blocks": need, "evicted_requests": int(evicted.sum()),
                     "lost_tokens": int(lost * c.query_tokens),
                     "restored_blocks": restores.restored_blocks if restores else None}, settings)]


def _with_concurrency(session: Session, view: EngineView, need: int | None, target: float) -> int | None:
    """The what-if curve's size, raised to what the scheduler model needs when the running
    requests' own blocks push the prefixes out at the curve's size (prefix_thrash: the curve's 133
    blocks measured 43.6 % in a real re-run, as the model predicted; its 137 measured 87.1 %).
    Sessions with more than ``th.SIMULATE_MAX_REQUESTS`` requests keep the curve's size."""
    if need is None or len(view.requests) > th.SIMULATE_MAX_REQUESTS:
        return need
    from profiler.analysis import simulate

    try:
        m = simulate.model(session, view.engine_id)
    except (NotAnalysable, ValueError):
        return need
    found = simulate.blocks_for_hit_rate(m, target, lo=need, hi=2 * need)
    return found if found is not None else need


def _recompute_range(view: EngineView, requests: list[whatif.RequestAccess]) -> tuple[float | None, float | None]:
    """When ``requests`` recomputed their evicted prefixes: from the first one's prefill start to the
    last one's prefill end (arrival + queued, + prefill, as vLLM reports them), seconds from session
    start. Without per-request timings: from the first addition to the last finish."""
    if not requests:
        return None, None
    ids = {r.request_id for r in requests} | {_REQUEST_SUFFIX.sub("", r.request_id) for r in requests}
    added = min(r.t_unix_s for r in requests) - view.t0_unix_s
    r = view.requests
    mine = r[r["request_id"].astype(str).isin(ids)] if not r.empty else r
    if mine.empty:
        return added, max(x.t_unix_s for x in requests) - view.t0_unix_s
    arrival = mine["t_finished_unix_s"] - mine["e2e_s"]
    start = arrival + mine["queued_s"]
    end = start + mine["prefill_s"]
    if start.notna().any() and end.notna().any():
        return float(start.min() - view.t0_unix_s), float(end.max() - view.t0_unix_s)
    return added, float(mine["t_finished_unix_s"].max() - view.t0_unix_s)


def _thrash_from_events(view: EngineView, session: Session, restores: Restores | None,
                        curve: whatif.MissRatioCurve | None) -> list[Finding]:
    if restores is None:
        return []
    served = tiers.tier_hit_tokens(session, view.engine_id) // (view.block_size or 1)
    if served:  # a block a tier reloaded is a GPU re-store too, but its prefill was not lost
        restores = Restores(max(restores.restored_blocks - served, 0), restores.stored_blocks,
                            restores.t_start_unix_s, restores.t_end_unix_s,
                            restores.median_evicted_s)
    frac = restores.restored_blocks / restores.stored_blocks
    if frac < th.RESTORE_THRASH_FRAC:
        return []
    t0 = restores.t_start_unix_s - view.t0_unix_s if restores.t_start_unix_s is not None else None
    t1 = restores.t_end_unix_s - view.t0_unix_s if restores.t_end_unix_s is not None else None
    evicted = (f", after {restores.median_evicted_s:.1f} s evicted (median)"
               if restores.median_evicted_s is not None else "")
    need = curve.blocks_for(th.THRASH_TARGET_OF_MAX) if curve is not None else None
    settings: dict[str, Any] = {}
    if need is not None and view.num_blocks and need > view.num_blocks:
        advice, settings = size_advice(view, session, need)
        rec = (f"re-store distances say ≥ {need} blocks of {view.block_size} (have {view.num_blocks}) "
               f"would keep {th.THRASH_TARGET_OF_MAX:.0%} of the re-stored blocks (an estimate: KV "
               f"events show misses only): {advice}")
    else:
        rec = (f"give the KV cache more blocks (have {view.num_blocks}); without prompt-block hashes "
               "the size that keeps them is only estimated from KV events")
    return [Finding(
        "PREFIX_THRASH", WARNING, t0, t1,
        f"KV events: {restores.restored_blocks:,} of {restores.stored_blocks:,} block stores "
        f"({frac:.0%}) re-stored a hash that had been evicted{evicted}: cached prefixes are recomputed",
        rec, view.engine_id,
        {"restored_blocks": restores.restored_blocks, "stored_blocks": restores.stored_blocks,
         "restore_frac": frac, "median_evicted_s": restores.median_evicted_s,
         "needed_blocks": need}, settings)]


def _blocks_per_running_seq(view: EngineView, steps: pd.DataFrame) -> float | None:
    n = view.num_blocks
    s = steps[(steps["running"] > 0) & steps["kv_usage_frac"].notna()]
    if not n or s.empty:
        return None
    return float((s["kv_usage_frac"] * (n - 1) / s["running"]).mean())


def queueing(view: EngineView, session: Session) -> list[Finding]:
    """Requests wait while KV has room: max_num_seqs or max_num_batched_tokens is the limit."""
    s = view.steps
    if s.empty:
        return []
    max_seqs = view.get("max_num_seqs")
    budget = view.get("max_num_batched_tokens")
    room = (s["waiting"] > 0) & (s["kv_usage_frac"] < th.KV_QUEUE_ROOM_FRAC)
    by_seqs = room & (s["running"] >= max_seqs) if max_seqs else room & False
    per_step = s["scraped"].fillna(0) == 0  # a scraped interval sums many steps' tokens
    by_tokens = (room & per_step & (s["prompt_tokens"] >= th.TOKEN_BUDGET_BOUND_FRAC * budget)
                 if budget else room & False)
    sp = span(view, by_seqs | by_tokens)
    if not sp.sustained:
        return []
    r = view.requests
    q50 = float(r["queued_s"].median()) if not r.empty else None
    e50 = float(r["e2e_s"].median()) if not r.empty else None
    hit = s[by_seqs | by_tokens]
    metrics: dict[str, Any] = {"busy_frac": sp.busy_frac, "steps": sp.steps,
                               "queued_s_p50": q50, "e2e_s_p50": e50,
                               "max_waiting": int(hit["waiting"].max()),
                               "kv_usage_frac_max": float(hit["kv_usage_frac"].max())}
    wait = (f"; median request queued {q50:.2f} s of {e50:.2f} s end-to-end"
            if q50 is not None and e50 else "")
    if by_seqs.sum() >= by_tokens.sum():
        per_seq = _blocks_per_running_seq(view, hit)
        peak = int((hit["running"] + hit["waiting"]).max())
        fit = (int((view.num_blocks - 1) * th.KV_TARGET_FRAC // per_seq) if per_seq and view.num_blocks
               else peak)
        target = max(min(fit, peak), int(max_seqs) + 1)
        metrics |= {"limit": "max_num_seqs", "blocks_per_seq": per_seq, "seqs_that_fit": fit}
        msg = (f"requests waited with the batch at max_num_seqs {int(max_seqs)} while KV usage stayed "
               f"≤ {float(hit['kv_usage_frac'].max()):.0%} for {sp.busy_frac:.0%} of busy time "
               f"({sp.steps} steps, up to {int(hit['waiting'].max())} waiting){wait}")
        rec = (f"the scheduler, not memory, is the limit: at ~{per_seq:.1f} blocks per running "
               f"sequence the cache of {view.num_blocks:,} blocks holds ~{fit:,} at "
               f"{th.KV_TARGET_FRAC:.0%}: --max-num-seqs {int(max_seqs)} → {target}"
               if per_seq else f"raise --max-num-seqs above {int(max_seqs)}")
        settings = {"max_num_seqs": target}
    else:
        metrics |= {"limit": "max_num_batched_tokens"}
        msg = (f"requests waited while each step used ≥{th.TOKEN_BUDGET_BOUND_FRAC:.0%} of "
               f"max_num_batched_tokens {int(budget)} and KV usage stayed "
               f"≤ {float(hit['kv_usage_frac'].max()):.0%}, for {sp.busy_frac:.0%} of busy time{wait}")
        rec = f"the token budget is the limit: --max-num-batched-tokens {int(budget)} → {int(budget) * 2}"
        settings = {"max_num_batched_tokens": int(budget) * 2}
    severity = sp.severity
    if q50 is None or not e50 or q50 / e50 < th.QUEUE_LATENCY_FRAC:
        severity = INFO
    return [Finding("QUEUEING", severity, sp.t_start_s, sp.t_end_s, msg, rec, view.engine_id,
                    metrics, settings)]


def kv_overprovisioned(view: EngineView, session: Session) -> list[Finding]:
    """A loaded engine whose KV usage never got far: the memory could serve a larger batch."""
    s = view.steps
    if s.empty or s["kv_usage_frac"].isna().all() or not view.num_blocks:
        return []
    max_seqs = view.get("max_num_seqs") or math.inf
    loaded_mask = (s["waiting"] > 0) | (s["running"] >= max_seqs)
    loaded = span(view, loaded_mask)
    peak = float(s["kv_usage_frac"].max())
    if not loaded.sustained or peak > th.KV_OVERPROVISIONED_PEAK_FRAC:
        return []
    n = view.num_blocks
    peak_blocks = int(round(peak * (n - 1)))
    per_seq = _blocks_per_running_seq(view, s)
    fit = int((n - 1) * th.KV_TARGET_FRAC // per_seq) if per_seq else None
    busy = s[loaded_mask]
    in_system = int((busy["running"] + busy["waiting"]).max())
    msg = (f"under load ({loaded.busy_frac:.0%} of busy time with requests waiting or the batch full) "
           f"KV usage peaked at {peak:.0%} ({peak_blocks:,} of {n:,} blocks)")
    parts = []
    settings: dict[str, Any] = {}
    batch = int(max_seqs) if max_seqs != math.inf else int(s["running"].max())
    if fit and max_seqs != math.inf and min(fit, in_system) > max_seqs:
        batch = min(fit, in_system)
        parts.append(f"the cache holds ~{fit:,} sequences at {per_seq:.1f} blocks each and up to "
                     f"{in_system} requests were in the system: --max-num-seqs {int(max_seqs)} → {batch}")
        settings["max_num_seqs"] = batch
    mem = startup_row(session)
    util = view.get("gpu_memory_utilization")
    per_block = kv_bytes_per_block(session, view)
    if (not parts and per_seq and per_block and mem and mem.get("device") == "cuda"
            and mem.get("total_bytes") and util):  # one recommendation: the batch first
        keep = math.ceil(batch * per_seq / th.KV_TARGET_FRAC) + 1
        if keep < n:
            freed = (n - keep) * per_block
            new_util = math.ceil((float(util) - freed / mem["total_bytes"]) * 100) / 100
            parts.append(f"a batch of {batch} needs ~{keep} blocks: gpu_memory_utilization "
                         f"{float(util):.2f} → {new_util:.2f} frees {fmt_bytes(freed)} for other work")
            settings["gpu_memory_utilization"] = new_util
    return [Finding("KV_OVERPROVISIONED", INFO, loaded.t_start_s, loaded.t_end_s, msg,
                    parts[0] if parts else None, view.engine_id,
                    {"peak_kv_usage_frac": peak, "peak_blocks": peak_blocks, "loaded_busy_frac":
                     loaded.busy_frac, "seqs_that_fit": fit, "max_in_system": in_system}, settings)]


RULES = (kv_saturation, preemption_storm, prefix_thrash, queueing, kv_overprovisioned)
"""Per-engine rules of this module, in report order."""
