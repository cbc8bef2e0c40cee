"""KV tiers and block residency from a server's /metrics (parsed by ``metrics.parse_metrics``).

Families read (counters without ``_total``), per engine label:

* offloading (vLLM 0.26+ flat names): ``vllm:kv_offload_store_bytes``, ``..._store_time``,
  ``..._load_bytes``, ``..._load_time``, ``vllm:kv_offload_cpu_cache_usage_perc`` (gauge),
  ``vllm:kv_offload_lookup_sync_delay_seconds`` (histogram: sum and count),
  ``vllm:kv_offload_allocation_failure``; the deprecated ``vllm:kv_offload_total_bytes`` /
  ``..._total_time`` with ``transfer_type`` ``GPU_to_CPU`` (store) / ``CPU_to_GPU`` (load), used
  when the flat ones are absent;
* the connector's prefix cache: ``vllm:external_prefix_cache_queries`` / ``_hits``, and the hits by
  tier ``vllm:prompt_tokens_cached_by_source{source}``; ``vllm:prompt_tokens_by_source{source}``
  and ``vllm:prompt_tokens_cached`` are kept in ``details_json``;
* LMCache's ``lmcache:*`` (``num_requested_tokens`` / ``num_hit_tokens`` when vLLM's external
  counters are absent; every ``lmcache:`` number is kept in ``details_json``);
* residency (``--kv-cache-metrics``): ``vllm:kv_block_lifetime_seconds``,
  ``vllm:kv_block_idle_before_evict_seconds``, ``vllm:kv_block_reuse_gap_seconds`` histograms,
  stored cumulatively in ``kv_residency_hist`` whenever their count moves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from profiler.session.rows import KvResidencyHistRow, TierSampleRow

COUNTER_KEYS = {
    "vllm:kv_offload_store_bytes": "stored_bytes",
    "vllm:kv_offload_store_time": "store_s",
    "vllm:kv_offload_load_bytes": "loaded_bytes",
    "vllm:kv_offload_load_time": "load_s",
    "vllm:kv_offload_allocation_failure": "allocation_failures",
    "vllm:kv_offload_lookup_sync_delay_seconds_sum": "lookup_s",
    "vllm:kv_offload_lookup_sync_delay_seconds_count": "lookups",
    "vllm:external_prefix_cache_queries": "ext_queries",
    "vllm:external_prefix_cache_hits": "ext_hits",
    "vllm:prompt_tokens_cached": "prompt_cached",
    "lmcache:num_requested_tokens": "lmcache_queries",
    "lmcache:num_hit_tokens": "lmcache_hits",
}
"""Counter sample name (without ``_total``) -> key of the per-engine cumulative values."""
LEGACY = {("vllm:kv_offload_total_bytes", "GPU_to_CPU"): "legacy_stored_bytes",
          ("vllm:kv_offload_total_bytes", "CPU_to_GPU"): "legacy_loaded_bytes",
          ("vllm:kv_offload_total_time", "GPU_to_CPU"): "legacy_store_s",
          ("vllm:kv_offload_total_time", "CPU_to_GPU"): "legacy_load_s"}
"""The deprecated transfer_type-labelled counters."""
GAUGE_KEYS = {"vllm:kv_offload_cpu_cache_usage_perc": "usage_frac"}
BY_SOURCE = ("vllm:prompt_tokens_cached_by_source", "vllm:prompt_tokens_by_source")
RESIDENCY = {"vllm:kv_block_lifetime_seconds": "lifetime",
             "vllm:kv_block_idle_before_evict_seconds": "idle_before_evict",
             "vllm:kv_block_reuse_gap_seconds": "reuse_gap"}
"""Residency histogram family -> ``kv_residency_hist.metric``."""
SOURCE_MEDIUM = {"host": "CPU", "disk": "DISK", "p2p": "P2P"}

FAMILIES = frozenset([*{k.rsplit("_sum", 1)[0].rsplit("_count", 1)[0] for k in COUNTER_KEYS},
                      *{name for name, _ in LEGACY}, *GAUGE_KEYS, *BY_SOURCE, *RESIDENCY])
"""Family names (no suffix) this module needs from /metrics, besides every ``lmcache:`` one."""


def wanted(base_name: str) -> bool:
    """True for a sample/family name (``_total`` already stripped) this module reads."""
    if base_name.startswith("lmcache:"):
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if base_name.endswith(suffix):
            base_name = base_name[: -len(suffix)]
            break
    return base_name in FAMILIES


@dataclass
class EngineTierValues:
    """One engine's cumulative tier counters, gauges and residency histograms in one scrape."""

    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, dict[str, float]] = field(default_factory=dict)
    """metric -> {le (text, ``+Inf``), ``sum``, ``count``: cumulative value}."""


def _strip_total(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def tier_values(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, EngineTierValues]:
    """Per engine label: the tier/residency numbers of one scrape (non-finite or negative dropped)."""
    out: dict[str, EngineTierValues] = {}
    for sample_name, labels, value in samples:
        if sample_name.endswith("_created") or not math.isfinite(value) or value < 0:
            continue
        eng = out.setdefault(labels.get("engine") or "0", EngineTierValues())
        name = _strip_total(sample_name)
        if name in COUNTER_KEYS:
            key = COUNTER_KEYS[name]
            eng.counters[key] = eng.counters.get(key, 0.0) + value
        elif (name, labels.get("transfer_type")) in LEGACY:
            key = LEGACY[(name, labels["transfer_type"])]
            eng.counters[key] = eng.counters.get(key, 0.0) + value
        elif name in GAUGE_KEYS:
            eng.gauges[GAUGE_KEYS[name]] = value
        elif name in BY_SOURCE and labels.get("source"):
            kind = "cached" if "cached" in name else "prompt"
            key = f"{kind}_by_source:{labels['source']}"
            eng.counters[key] = eng.counters.get(key, 0.0) + value
        elif name.startswith("lmcache:"):
            if name.endswith("_bucket"):
                continue
            if sample_name.endswith("_total") or name.endswith(("_sum", "_count")):
                key = COUNTER_KEYS.get(name, name)
                eng.counters[key] = eng.counters.get(key, 0.0) + value
            else:
                eng.gauges[name] = value
        else:
            for family, metric in RESIDENCY.items():
                if sample_name.startswith(family):
                    part = sample_name[len(family):]
                    hist = eng.histograms.setdefault(metric, {})
                    if part == "_bucket" and "le" in labels:
                        hist[labels["le"]] = hist.get(labels["le"], 0.0) + value
                    elif part in ("_sum", "_count"):
                        hist[part[1:]] = hist.get(part[1:], 0.0) + value
                    break
    return out


@dataclass
class TierTracker:
    """Per-interval tier rows and residency rows for one engine across scrapes."""

    last: dict[str, float] | None = None
    last_hist_count: dict[str, float] = field(default_factory=dict)

    def rows(self, values: EngineTierValues, engine_id: int, t_unix_s: float, restarted: bool
             ) -> tuple[list[TierSampleRow], list[KvResidencyHistRow]]:
        """Rows for this scrape: tier deltas since the previous one (none on the first: a
        baseline), and the residency histograms whose count changed (always on the first)."""
        hist_rows: list[KvResidencyHistRow] = []
        for metric, hist in values.histograms.items():
            count = hist.get("count")
            if count is None or (metric in self.last_hist_count and not restarted
                                 and self.last_hist_count[metric] == count):
                continue
            self.last_hist_count[metric] = count
            for le, v in hist.items():
                hist_rows.append(KvResidencyHistRow(engine_id, t_unix_s, metric, le, v))
        now = values.counters
        last, self.last = self.last, dict(now)
        if last is None or not (now or values.gauges):
            return [], hist_rows
        d: dict[str, float] = {}
        for key, v in now.items():
            prev = last.get(key)
            d[key] = v if restarted or prev is None or v < prev else v - prev
        return _tier_rows(d, values.gauges, engine_id, t_unix_s), hist_rows


def _tier_rows(d: dict[str, float], gauges: dict[str, float], engine_id: int, t_unix_s: float
               ) -> list[TierSampleRow]:
    offload = any(k in d for k in ("stored_bytes", "loaded_bytes", "legacy_stored_bytes",
                                   "legacy_loaded_bytes")) or "usage_frac" in gauges
    lmcache = any(k.startswith("lmcache") for k in (*d, *gauges))
    medium = "CPU" if offload else "LMCache" if lmcache else "external"
    queries = d.get("ext_queries", d.get("lmcache_queries"))
    hits = d.get("ext_hits", d.get("lmcache_hits"))
    by_source = {k.split(":", 1)[1]: v for k, v in d.items() if k.startswith("cached_by_source:")}
    split = {SOURCE_MEDIUM.get(src, medium): 0.0 for src in by_source if src != "device"}
    for src, v in by_source.items():
        if src != "device":
            split[SOURCE_MEDIUM.get(src, medium)] += v
    own_hits = split.pop(medium, None) if sum(split.values()) > 0 else hits
    if queries is None and hits is None and not offload and not lmcache and not split:
        return []

    def pick(key: str, legacy: str) -> float | None:
        return d.get(key, d.get(legacy))

    details = {k: v for k, v in d.items() if k not in ("ext_queries", "ext_hits")}
    details |= {f"gauge:{k}": v for k, v in gauges.items()}
    usage = gauges.get("usage_frac")
    rows = [TierSampleRow(
        engine_id=engine_id, t_unix_s=t_unix_s, medium=medium, queries_tokens=_int(queries),
        hits_tokens=_int(own_hits), stored_bytes=_int(pick("stored_bytes", "legacy_stored_bytes")),
        store_s=pick("store_s", "legacy_store_s"),
        loaded_bytes=_int(pick("loaded_bytes", "legacy_loaded_bytes")),
        load_s=pick("load_s", "legacy_load_s"),
        usage_frac=min(usage, 1.0) if usage is not None else None, lookup_s=d.get("lookup_s"),
        lookups=_int(d.get("lookups")), allocation_failures=_int(d.get("allocation_failures")),
        scraped=1, details_json=json.dumps(details, sort_keys=True) if details else None,
    )]
    for tier, v in sorted(split.items()):
        if v > 0:
            rows.append(TierSampleRow(engine_id, t_unix_s, tier, None, _int(v), None, None, None,
                                      None, None, None, None, None, 1, None))
    return rows


def _int(value: float | None) -> int | None:
    return int(round(value)) if value is not None else None
