"""Recording options that switch on vLLM's own KV instrumentation for the recorded engine.

``kvscope record --kv-events`` / ``--kv-cache-metrics [SAMPLE]`` set these variables; the frontend
applies them to the engine's VllmConfig before the engine core starts (the core gets a copy):

* ``KVSCOPE_KV_EVENTS=1``: KV-cache events on, through vLLM's ``null`` publisher when the program
  did not configure events (no socket): the engine core's hook stores every batch in ``kv_events``.
* ``KVSCOPE_KV_CACHE_METRICS=SAMPLE``: vLLM's block residency sampling (``--kv-cache-metrics``)
  at that fraction of blocks; the evictions come back in ``SchedulerStats.kv_cache_eviction_events``.

A program that configured either itself keeps its settings (a ZMQ publisher stays ZMQ).
"""

from __future__ import annotations

import os
from typing import Any

ENV_CORE_STATS = "KVSCOPE_CORE_STATS"
"""Set while a frontend that counts its outputs itself (``lean_stats``) starts its engine core: that
core runs with vLLM's stats on (its SchedulerStats and request events ride on its outputs)."""
ENV_KV_EVENTS = "KVSCOPE_KV_EVENTS"
ENV_KV_CACHE_METRICS = "KVSCOPE_KV_CACHE_METRICS"


def cache_metrics_sample() -> float | None:
    """The residency sampling fraction asked for (None: not asked, or not in (0, 1])."""
    raw = os.environ.get(ENV_KV_CACHE_METRICS)
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and 0 < value <= 1 else None


def apply(vllm_config: Any) -> list[str]:
    """Switch on what the environment asks for; returns what was changed (for an event)."""
    changed: list[str] = []
    if os.environ.get(ENV_KV_EVENTS) == "1":
        current = getattr(vllm_config, "kv_events_config", None)
        if current is None or not getattr(current, "enable_kv_cache_events", False):
            try:
                from vllm.config import KVEventsConfig

                vllm_config.kv_events_config = KVEventsConfig(enable_kv_cache_events=True,
                                                              publisher="null")
                changed.append("kv_events")
            except Exception:
                pass
    sample = cache_metrics_sample()
    obs = getattr(vllm_config, "observability_config", None)
    if sample is not None and obs is not None and hasattr(obs, "kv_cache_metrics"):
        try:
            if not obs.kv_cache_metrics:
                obs.kv_cache_metrics = True
                obs.kv_cache_metrics_sample = sample
                changed.append(f"kv_cache_metrics (sample {sample:g})")
        except Exception:
            pass
    return changed


def core_stats_forced() -> bool:
    """True in an engine core whose frontend counts outputs itself (its stats must be on)."""
    return os.environ.get(ENV_CORE_STATS) == "1"
