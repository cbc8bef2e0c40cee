"""KV-cache groups: how the engine core split its KV cache, and how many blocks each group holds.

A model with more than one kind of attention layer (sliding-window layers beside full attention,
Mamba beside attention, EAGLE draft layers) gets one KV-cache group per kind; the groups share
one pool of ``num_blocks`` blocks. At KV-cache start-up the engine core stores one
``kv_cache_groups`` row per group (kind, layers, block size, window, bytes per page). For models
with several groups, a wrapper on the scheduler's ``make_stats`` then stores how many distinct
blocks each group holds (``kv_group_usage``), next to the pool's usage from the same stats, at
most every ``KVSCOPE_KV_GROUP_INTERVAL_MS`` (default 250; 0 = every step: tests compare it with
the engine's own usage). A one-group model pays nothing per step.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from profiler.recorder import context
from profiler.session.rows import KvCacheGroupRow, KvGroupUsageRow

ENV_ENGINE_ID = "KVSCOPE_ENGINE_ID"
"""Set by the frontend before its engine core starts: the ``engines`` row the core belongs to."""
ENV_INTERVAL_MS = "KVSCOPE_KV_GROUP_INTERVAL_MS"
DEFAULT_INTERVAL_MS = 250.0


_rank_engine_id: list[int] = []
"""A data-parallel rank > 0's engine id, once looked up (see ``engine_id``)."""
os.register_at_fork(after_in_child=_rank_engine_id.clear)
_pending_rows: list[KvCacheGroupRow] = []
"""Group rows of a rank > 0 whose engine the frontend had not described yet at KV-cache start."""


def engine_id() -> int | None:
    """The engine this engine core's rows belong to.

    Without data parallelism, and on DP rank 0, the frontend's pending engine (its environment:
    ``KVSCOPE_ENGINE_ID``). Every DP rank inherits that environment, so a rank > 0 takes the
    frontend's ``engines`` row of its own index instead (None until the frontend has written it:
    on vLLM 0.26 the frontend describes its engines once all of them have started). An engine core
    with no frontend above it (no such environment: a headless node of multi-node DP, or engines
    that vLLM's launcher started for several API servers) looks its row up the same way: the
    frontend's, or on a headless node the one it wrote itself (``stat_logger.insert_headless_engine``)."""
    rank = context.dp_rank()
    if rank or (rank is not None and ENV_ENGINE_ID not in os.environ):
        if not _rank_engine_id:
            eid = context.engine_id_of_this_process()
            if eid is None:
                return None
            _rank_engine_id.append(eid)
        return _rank_engine_id[0]
    try:
        return int(os.environ[ENV_ENGINE_ID])
    except (KeyError, ValueError):
        return None


_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
"""Where a CamelCase word starts: after a lower-case letter or digit, or inside an acronym before
its last capital when a lower-case letter follows (``MLAAttention`` → ``MLA`` + ``Attention``)."""


def kind_of(spec: Any) -> str:
    """``FullAttentionSpec`` → ``full_attention``, ``SlidingWindowSpec`` → ``sliding_window``,
    ``MLAAttentionSpec`` → ``mla_attention``, ``MambaSpec`` → ``mamba``, ...

    An acronym stays one word (``SlidingWindowMLASpec`` → ``sliding_window_mla``). A spec wrapping
    several same-type layer specs (``UniformTypeKVCacheSpecs``) is named after them.
    """
    inner = getattr(spec, "kv_cache_specs", None)
    if isinstance(inner, dict) and inner:
        kinds = {kind_of(s) for s in inner.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    name = type(spec).__name__.removesuffix("Spec")
    return _WORD_START.sub("_", name).lower()


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _first_spec(spec: Any) -> Any:
    inner = getattr(spec, "kv_cache_specs", None)
    return next(iter(inner.values())) if isinstance(inner, dict) and inner else spec


def group_rows(config: Any, engine: int | None, t_unix_s: float) -> list[KvCacheGroupRow]:
    """One row per KV-cache group of a ``KVCacheConfig``."""
    rows = []
    num_blocks = _int(getattr(config, "num_blocks", None))
    for i, group in enumerate(getattr(config, "kv_cache_groups", None) or ()):
        spec = getattr(group, "kv_cache_spec", None)
        names = [str(n) for n in getattr(group, "layer_names", None) or ()]
        window = getattr(_first_spec(spec), "sliding_window", None)
        try:
            page = _int(spec.page_size_bytes)
        except Exception:
            page = None
        rows.append(KvCacheGroupRow(
            engine_id=engine, t_unix_s=t_unix_s, group_index=i, kind=kind_of(spec),
            layers=len(names), layer_names=json.dumps(names),
            block_size=_int(getattr(spec, "block_size", None)), sliding_window_tokens=_int(window),
            page_size_bytes=page, num_blocks=num_blocks,
            is_draft=int(bool(getattr(group, "is_eagle_group", False))),
        ))
    return rows


def record_groups(config: Any) -> int:
    """Store the groups of the engine core's KV-cache config; returns how many there are."""
    w = context.writer()
    if w is None:
        return 0
    eid = engine_id()
    rows = group_rows(config, eid, time.time())
    if eid is None and context.dp_rank():  # written once the frontend has described this rank
        _pending_rows[:] = rows
        return len(rows)
    _store(w, rows, eid)
    return len(rows)


def _store(w: Any, rows: list[KvCacheGroupRow], eid: int | None) -> None:
    """The group rows, and this engine's block count on its ``engines`` row (under data
    parallelism vLLM's frontend only knows the sum over the ranks)."""
    for row in rows:
        w.append("kv_cache_groups", row._replace(engine_id=eid))
    if eid is not None and rows and rows[0].num_blocks is not None:
        w.execute_now("UPDATE engines SET num_gpu_blocks = ? WHERE engine_id = ?",
                      (rows[0].num_blocks, eid))


def flush_pending(w: Any) -> None:
    """Write a DP rank's held-back group rows once its engine id is known."""
    eid = engine_id()
    if eid is None:
        return
    rows, _pending_rows[:] = list(_pending_rows), []
    _store(w, rows, eid)


def blocks_per_group(scheduler: Any) -> list[int] | None:
    """Distinct blocks each KV-cache group holds now (null blocks of skipped windows excluded)."""
    managers = getattr(getattr(getattr(scheduler, "kv_cache_manager", None), "coordinator", None),
                       "single_type_managers", None)
    if not managers:
        return None
    out = []
    for m in managers:
        held: set[int] = set()
        for blocks in getattr(m, "req_to_blocks", {}).values():
            for b in blocks:
                if not getattr(b, "is_null", False):
                    held.add(b.block_id)
        out.append(len(held))
    return out


def _interval_s() -> float:
    try:
        return max(float(os.environ.get(ENV_INTERVAL_MS, DEFAULT_INTERVAL_MS)), 0.0) / 1000.0
    except ValueError:
        return DEFAULT_INTERVAL_MS / 1000.0


def wrap_make_stats(method: Callable[..., Any]) -> Callable[..., Any]:
    """Scheduler ``make_stats`` wrapper: per-group blocks of multi-group engines, throttled."""
    every_s = _interval_s()
    state = {"next": 0.0}

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        stats = method(self, *args, **kwargs)
        if stats is None:
            return stats
        if _pending_rows:
            w = context.writer()
            if w is not None:
                flush_pending(w)
        managers = getattr(getattr(getattr(self, "kv_cache_manager", None), "coordinator", None),
                           "single_type_managers", None)
        if not isinstance(managers, (tuple, list)) or len(managers) < 2:
            return stats
        try:
            now = time.time()
            if now < state["next"]:
                return stats
            state["next"] = now + every_s
            w = context.writer()
            counts = blocks_per_group(self)
            if w is None or counts is None:
                return stats
            usage = getattr(stats, "kv_cache_usage", None)
            eid = engine_id()
            for i, n in enumerate(counts):
                w.append("kv_group_usage", KvGroupUsageRow(
                    engine_id=eid, t_unix_s=now, group_index=i, blocks_used=n,
                    kv_usage_frac=usage if isinstance(usage, float) else None))
        except Exception as exc:
            w = context.writer()
            if w is not None:
                w.event("error", f"kvscope could not read the KV-cache groups' blocks: {exc!r}")
            state["next"] = float("inf")  # once
        return stats

    return wrapper
