"""Recording inside vLLM's scheduler (the engine-core process, which owns the KV cache).

What the frontend's stat logger cannot see is read here, where it happens:

* every preemption: the request, computed tokens discarded, prompt/output tokens at that moment,
  blocks returned to the free pool, KV usage before and after, and the reason (kvscope's, from the
  scheduler method that preempted: ``kv_cache_full`` when ``schedule`` found no free blocks for a
  running request, ``prefix_cache_reset`` when ``reset_prefix_cache`` preempted everything; vLLM
  itself records no reason);
* every prefix-cache lookup vLLM counts for a previously preempted request (the resume): the
  tokens it queried and hit, exactly the numbers vLLM adds to ``preempted_queries/hits``;
* per step, the tokens actually held in the KV blocks in use (``kv_occupancy``);
* the KV-cache event batches the scheduler publishes (``kv_events``, ``source`` = ``inproc``),
  through whatever publisher the engine has (ZMQ or null), so no socket is needed.

Every hook observes only: it calls vLLM's method, reads what it needs with getattr, and swallows
its own errors. A vLLM version without a hooked method records nothing for that part (NULL).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from profiler.recorder import context, kv_groups
from profiler.session.kv_hash import fold_hash
from profiler.session.rows import KvEventRow, KvOccupancyRow, PreemptionRow

REASONS = {"schedule": "kv_cache_full", "reset_prefix_cache": "prefix_cache_reset"}
"""Scheduler method that called ``_preempt_request`` -> the reason kvscope records."""

Patch = Callable[[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]], None]

_seq = itertools.count()
_guard = threading.local()


def install(patch: Patch) -> None:
    """Wrap the scheduler, KV cache manager and KV-event publishers of this vLLM, where present."""
    sched = _module("vllm.v1.core.sched.scheduler")
    if sched is not None and hasattr(sched, "Scheduler"):
        patch(sched.Scheduler, "__init__", _wrap_scheduler_init)
        patch(sched.Scheduler, "_preempt_request", _wrap_preempt)
        # make_stats is wrapped by the plugin together with kv_groups' wrapper (wrap_make_stats)
    manager = _module("vllm.v1.core.kv_cache_manager")
    if manager is not None and hasattr(manager, "KVCacheManager"):
        # 0.3x counts a lookup at admission (record_prefix_cache_stats); 0.2x inside
        # get_computed_blocks: wrapping both follows whichever counts.
        patch(manager.KVCacheManager, "record_prefix_cache_stats", _wrap_lookup)
        patch(manager.KVCacheManager, "get_computed_blocks", _wrap_lookup)
    events = _module("vllm.distributed.kv_events")
    base = getattr(events, "EventPublisher", None) if events is not None else None
    if isinstance(base, type):
        for obj in list(vars(events).values()):
            if isinstance(obj, type) and issubclass(obj, base) and "publish" in vars(obj):
                patch(obj, "publish", _wrap_publish)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a version whose module fails to import here
        return None


# --- which engine ---------------------------------------------------------------------------

_engine_id_cache: list[int] = []


def _engine_id(scheduler: Any | None = None) -> int | None:
    """This engine core's session engine id: data-parallel rank 0 has the frontend's pending
    engine (``KVSCOPE_ENGINE_ID``), another rank the frontend's engine row of its index (looked up
    until the frontend has written it). None while unknown."""
    if _engine_id_cache:
        return _engine_id_cache[0]
    rank = context.dp_rank()
    if rank is None and scheduler is not None:
        rank = getattr(getattr(getattr(scheduler, "vllm_config", None), "parallel_config", None),
                       "data_parallel_rank", 0)
    eid = kv_groups.engine_id() if not rank else context.engine_id_of_this_process()
    if eid is not None:
        _engine_id_cache.append(eid)
    return eid


def _wrap_scheduler_init(init: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        with contextlib.suppress(Exception):
            _engine_id(self)  # before the first KV-event batch is published

    return __init__


def _writer() -> Any:
    return context.writer()


# --- preemptions ----------------------------------------------------------------------------


def _pool_state(scheduler: Any) -> tuple[int | None, float | None]:
    mgr = getattr(scheduler, "kv_cache_manager", None)
    pool = getattr(mgr, "block_pool", None)
    free = None
    with contextlib.suppress(Exception):
        free = int(pool.get_num_free_blocks())
    usage = None
    with contextlib.suppress(Exception):
        usage = float(mgr.usage)
    return free, usage


def _int_attr(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _wrap_preempt(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        w = _writer()
        if w is None:
            return method(self, request, *args, **kwargs)
        before: tuple[Any, ...] | None = None
        try:
            caller = sys._getframe(1).f_code.co_name
            before = (caller, _int_attr(request, "num_computed_tokens"),
                      _int_attr(request, "num_prompt_tokens"),
                      _int_attr(request, "num_output_tokens"), *_pool_state(self))
        except Exception:
            pass
        out = method(self, request, *args, **kwargs)
        if before is not None:
            try:
                caller, computed, prompt, output, free0, usage0 = before
                free1, usage1 = _pool_state(self)
                w.append("preemptions", PreemptionRow(
                    engine_id=_engine_id(self), t_unix_s=time.time(),
                    request_id=getattr(request, "request_id", None), event="preempted",
                    reason=REASONS.get(caller, caller), computed_tokens=computed,
                    prompt_tokens=prompt, output_tokens=output,
                    blocks_freed=(free1 - free0) if free0 is not None and free1 is not None else None,
                    kv_usage_before_frac=usage0, kv_usage_after_frac=usage1,
                    queries_tokens=None, hits_tokens=None,
                ))
            except Exception:
                pass
        return out

    return wrapper


def _wrap_lookup(method: Callable[..., Any]) -> Callable[..., Any]:
    """A resume row whenever this call added to vLLM's preempted-request prefix counters."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        stats = getattr(self, "prefix_cache_stats", None)
        if _writer() is None or stats is None or getattr(_guard, "on", False):
            return method(self, request, *args, **kwargs)
        q0 = getattr(stats, "preempted_queries", None)
        h0 = getattr(stats, "preempted_hits", None)
        _guard.on = True
        try:
            out = method(self, request, *args, **kwargs)
        finally:
            _guard.on = False
        try:
            q1 = getattr(stats, "preempted_queries", None)
            h1 = getattr(stats, "preempted_hits", None)
            if isinstance(q0, int) and isinstance(q1, int) and q1 > q0:
                dh = h1 - h0 if isinstance(h0, int) and isinstance(h1, int) else None
                _writer().append("preemptions", PreemptionRow(
                    engine_id=_engine_id(), t_unix_s=time.time(),
                    request_id=getattr(request, "request_id", None), event="resumed", reason=None,
                    computed_tokens=None, prompt_tokens=_int_attr(request, "num_prompt_tokens"),
                    output_tokens=_int_attr(request, "num_output_tokens"), blocks_freed=None,
                    kv_usage_before_frac=None, kv_usage_after_frac=None,
                    queries_tokens=q1 - q0, hits_tokens=dh,
                ))
        except Exception:
            pass
        return out

    return wrapper


# --- token occupancy ------------------------------------------------------------------------


def occupancy(scheduler: Any) -> tuple[int, int] | None:
    """(blocks in use, tokens held in them) of a single-group KV cache; None when unknown.

    Blocks in use have a reference (what vLLM's usage counts); a request's blocks are full except
    its tail, so the tokens held are ``used × block_size`` minus, per request, the slots of its
    blocks beyond its computed tokens (shared prefix blocks are full: no slack to subtract).
    """
    mgr = getattr(scheduler, "kv_cache_manager", None)
    pool = getattr(mgr, "block_pool", None)
    groups = getattr(getattr(mgr, "coordinator", None), "single_type_managers", None)
    total = getattr(pool, "num_gpu_blocks", None)
    if pool is None or not groups or len(groups) != 1 or not isinstance(total, int):
        return None
    group = groups[0]
    bs = getattr(group, "block_size", None)
    per_request = getattr(group, "req_to_blocks", None)
    requests = getattr(scheduler, "requests", None)
    if not isinstance(bs, int) or bs <= 0 or per_request is None or requests is None:
        return None
    used = (total - 1) - int(pool.get_num_free_blocks())  # vLLM's null block never holds KV
    # runs every step in the engine core's loop: plain arithmetic, no per-request getattr
    slack = 0
    get = requests.get
    for rid, blocks in list(per_request.items()):
        slots = len(blocks) * bs
        req = get(rid)
        computed = req.num_computed_tokens if req is not None else 0
        if computed < slots:
            slack += slots - computed
    return used, max(used * bs - slack, 0)


def wrap_make_stats(method: Callable[..., Any]) -> Callable[..., Any]:
    """Scheduler ``make_stats`` wrapper: one ``kv_occupancy`` row per step that made stats."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        w = _writer()
        if out is None or w is None:
            return out
        try:
            occ = occupancy(self)
            if occ is not None:
                w.append("kv_occupancy", KvOccupancyRow(_engine_id(self), time.time(), *occ))
        except Exception:
            pass
        return out

    return wrapper


# --- KV-cache events ------------------------------------------------------------------------


def kv_event_rows(batch: Any, engine_id: int | None, seq: int) -> list[KvEventRow]:
    """``kv_events`` rows of one vLLM KVEventBatch object (one per block, ``source`` inproc)."""
    ts = float(getattr(batch, "ts", None) or time.time())
    rows: list[KvEventRow] = []
    for ev in getattr(batch, "events", None) or ():
        kind = type(ev).__name__
        if kind == "AllBlocksCleared":
            rows.append(KvEventRow(engine_id, ts, seq, "cleared", None, None, None, "inproc"))
            continue
        if kind not in ("BlockStored", "BlockRemoved"):
            continue
        medium = getattr(ev, "medium", None)
        medium = str(medium) if medium is not None else None
        stored = kind == "BlockStored"
        raw_parent = getattr(ev, "parent_block_hash", None) if stored else None
        parent = fold_hash(raw_parent) if raw_parent is not None else None
        for h in getattr(ev, "block_hashes", None) or ():
            folded = fold_hash(h)
            rows.append(KvEventRow(engine_id, ts, seq, "stored" if stored else "removed", folded,
                                   parent if stored else None, medium, "inproc"))
            parent = folded
    return rows


def _wrap_publish(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, events: Any, *args: Any, **kwargs: Any) -> Any:
        w = _writer()
        if w is not None:
            try:
                for row in kv_event_rows(events, _engine_id(), next(_seq)):
                    w.append("kv_events", row)
            except Exception:
                pass
        return method(self, events, *args, **kwargs)

    return wrapper
