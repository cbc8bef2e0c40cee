"""KV connector (offload tier) numbers from vLLM's per-step SchedulerStats, read defensively.

``SchedulerStats.kv_connector_stats`` is whatever the connector's ``KVConnectorStats.to_dict()``
returned, merged over the engine's workers. The native offloading connector (vLLM 0.26-0.33) uses
a self-describing shape, ``{"types": {name: counter|gauge|histogram}, "data": {name: {labelvalues:
value}}}``, with flat metric names (``vllm:kv_offload_store_bytes``, ``..._store_time``,
``..._load_bytes``, ``..._load_time``, ``vllm:kv_offload_cpu_cache_usage_perc``,
``vllm:kv_offload_lookup_sync_delay_seconds``, ``vllm:kv_offload_allocation_failure``, ...).
Older connectors reported ``{"GPU_to_CPU": [{"op_size": bytes, "op_time": s}, ...], ...}``.
Both are flattened here to ``{name: number}`` (a histogram to ``name_count`` and ``name_sum``);
everything is kept in ``tier_samples.details_json``, and the known names fill the columns.

``SchedulerStats.connector_prefix_cache_stats`` (a PrefixCacheStats) holds the connector's
prefix-cache queries and hits (tokens the GPU cache missed, looked up in the tier), and in 0.3x
``hits_by_source`` splits the hits by tier (host, disk, p2p, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from profiler.session.rows import TierSampleRow

STORE_BYTES = ("vllm:kv_offload_store_bytes",)
STORE_TIME = ("vllm:kv_offload_store_time",)
LOAD_BYTES = ("vllm:kv_offload_load_bytes",)
LOAD_TIME = ("vllm:kv_offload_load_time",)
USAGE = ("vllm:kv_offload_cpu_cache_usage_perc",)
LOOKUP = ("vllm:kv_offload_lookup_sync_delay_seconds",)
ALLOC_FAILURES = ("vllm:kv_offload_allocation_failure",)
_LEGACY_STORE, _LEGACY_LOAD = "GPU_to_CPU", "CPU_to_GPU"

SOURCE_MEDIUM = {"host": "CPU", "disk": "DISK", "p2p": "P2P", "device": "GPU"}
"""vLLM's CacheHitSource values -> the ``medium`` names kvscope uses (KV events use GPU/CPU)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _label_suffix(labels: Any) -> str:
    if labels in ((), [], None, "()", ""):
        return ""
    if isinstance(labels, list | tuple):
        return "{" + ",".join(str(v) for v in labels) + "}"
    return "{" + str(labels) + "}"


def flatten_connector_stats(stats: Any) -> dict[str, float]:
    """``kv_connector_stats`` as ``{name: number}``; unknown shapes give what numbers they hold."""
    out: dict[str, float] = {}
    if not isinstance(stats, dict):
        return out
    data = stats.get("data")
    if isinstance(data, dict) and isinstance(stats.get("types", {}), dict):
        for name, per_label in data.items():
            items = per_label.items() if isinstance(per_label, dict) else [((), per_label)]
            for labels, value in items:
                _add(out, f"{name}{_label_suffix(labels)}", value)
        return out
    for name, value in stats.items():
        if name in (_LEGACY_STORE, _LEGACY_LOAD) and isinstance(value, list):
            for op in value:
                if isinstance(op, dict):
                    _add(out, f"{name}.op_size", op.get("op_size"))
                    _add(out, f"{name}.op_time", op.get("op_time"))
            continue
        _add(out, str(name), value)
    return out


def _add(out: dict[str, float], key: str, value: Any) -> None:
    n = _number(value)
    if n is not None:
        out[key] = out.get(key, 0.0) + n
        return
    if isinstance(value, list | tuple):
        nums = [x for x in (_number(v) for v in value) if x is not None]
        out[f"{key}_count"] = out.get(f"{key}_count", 0.0) + len(nums)
        out[f"{key}_sum"] = out.get(f"{key}_sum", 0.0) + sum(nums)
    elif isinstance(value, dict):
        for k, v in value.items():
            _add(out, f"{key}.{k}", v)


def _pick(flat: dict[str, float], names: Iterable[str], suffix: str = "") -> float | None:
    found = [flat[n + suffix] for n in names if n + suffix in flat]
    return sum(found) if found else None


def _int(value: float | None) -> int | None:
    return int(round(value)) if value is not None else None


def connector_medium(vllm_config: Any) -> str | None:
    """The tier a KV connector writes to: ``CPU`` for vLLM's native offloading, else its name."""
    ktc = getattr(vllm_config, "kv_transfer_config", None)
    name = getattr(ktc, "kv_connector", None)
    if not name:
        return None
    name = str(name)
    if name in ("OffloadingConnector", "SimpleCPUOffloadConnector", "CPUOffloadingConnector"):
        return "CPU"
    if name.startswith("LMCache"):
        return "LMCache"
    if name == "ExampleConnector":  # vLLM's reference connector: KV files on local disk
        return "DISK"
    return name


def connector_capacity_bytes(vllm_config: Any) -> int | None:
    """Bytes the native CPU tier was given (``kv_offloading_size`` → ``cpu_bytes_to_use``)."""
    ktc = getattr(vllm_config, "kv_transfer_config", None)
    extra = getattr(ktc, "kv_connector_extra_config", None)
    value = extra.get("cpu_bytes_to_use") if isinstance(extra, dict) else None
    n = _number(value)
    return int(n) if n is not None and n > 0 else None


def tier_rows(s: Any, engine_id: int | None, t_unix_s: float, medium: str | None
              ) -> list[TierSampleRow]:
    """This step's ``tier_samples`` rows from a SchedulerStats (none when it has no connector data)."""
    cps = getattr(s, "connector_prefix_cache_stats", None)
    raw = getattr(s, "kv_connector_stats", None)
    flat = flatten_connector_stats(raw) if raw else {}
    if cps is None and not flat:
        return []
    medium = medium or "external"
    queries = _int(_number(getattr(cps, "queries", None))) if cps is not None else None
    hits = _int(_number(getattr(cps, "hits", None))) if cps is not None else None
    by_source: dict[str, int] = {}
    for source, n in (getattr(cps, "hits_by_source", None) or {}).items():
        key = str(getattr(source, "value", source))
        tier = SOURCE_MEDIUM.get(key, medium)
        if _number(n) is not None:
            by_source[tier] = by_source.get(tier, 0) + int(n)
    own_hits = by_source.pop(medium, None) if by_source else hits
    if by_source and own_hits is None:
        own_hits = 0
    stored = _pick(flat, STORE_BYTES)
    loaded = _pick(flat, LOAD_BYTES)
    store_s = _pick(flat, STORE_TIME)
    load_s = _pick(flat, LOAD_TIME)
    if stored is None and f"{_LEGACY_STORE}.op_size" in flat:
        stored, store_s = flat[f"{_LEGACY_STORE}.op_size"], flat.get(f"{_LEGACY_STORE}.op_time")
    if loaded is None and f"{_LEGACY_LOAD}.op_size" in flat:
        loaded, load_s = flat[f"{_LEGACY_LOAD}.op_size"], flat.get(f"{_LEGACY_LOAD}.op_time")
    usage = _pick(flat, USAGE)
    rows = [TierSampleRow(
        engine_id=engine_id, t_unix_s=t_unix_s, medium=medium, queries_tokens=queries,
        hits_tokens=own_hits, stored_bytes=_int(stored), store_s=store_s, loaded_bytes=_int(loaded),
        load_s=load_s, usage_frac=min(usage, 1.0) if usage is not None else None,
        lookup_s=_pick(flat, LOOKUP, "_sum"), lookups=_int(_pick(flat, LOOKUP, "_count")),
        allocation_failures=_int(_pick(flat, ALLOC_FAILURES)), scraped=0,
        details_json=json.dumps(flat, sort_keys=True) if flat else None,
    )]
    for tier, n in sorted(by_source.items()):  # further tiers the connector named
        rows.append(TierSampleRow(engine_id, t_unix_s, tier, None, n, None, None, None, None, None,
                                  None, None, None, 0, None))
    return rows
