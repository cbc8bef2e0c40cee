"""KV offloading and EAGLE speculative decoding recorded on a real H200 with vLLM 0.26.0
(bench/gpu/batch.sh ``offload`` and ``spec``, bench/gpu_offload.py's server half; 2026-11-30):
each session against the independent stat logger, or the server's own counters, of the same run,
and the /metrics fixture of the real offloading server against the session attached to it.
CI has no GPU; the data is real."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from profiler.analysis.report import build_report
from profiler.session.reader import open_session

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ROOT / "sessions"
RESULTS = ROOT / "bench" / "results"
FIXTURES = ROOT / "tests" / "fixtures"


@cache
def _report(name: str) -> dict[str, Any]:
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        return build_report(s)


def _counts(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _tier(rep: dict[str, Any], medium: str) -> dict[str, Any]:
    return next(t for t in rep["kv_tiers"] if t["medium"] == medium)


def test_offload_session_equals_the_independent_logger() -> None:
    rep, c = _report("gpu_h200_offload"), _counts("gpu_h200_offload_counts")
    assert rep["session"]["vllm_version"] == "0.26.0"
    assert (rep["engine"]["num_gpu_blocks"], rep["engine"]["block_size"]) == (700, 16)
    assert rep["steps"] == c["steps"] and rep["requests_finished"] == c["finished"]
    assert rep["preemptions"] == c["preemptions"]
    gpu, cpu = _tier(rep, "GPU"), _tier(rep, "CPU")
    assert (gpu["queries_tokens"], gpu["hits_tokens"]) == (c["prefix_queries"], c["prefix_hits"])
    assert (cpu["queries_tokens"], cpu["hits_tokens"]) == (c["connector_prefix_queries"],
                                                           c["connector_prefix_hits"])
    totals = c["kv_connector_totals"]
    assert cpu["stored_bytes"] == totals["data.vllm:kv_offload_store_bytes.()"]
    assert cpu["loaded_bytes"] == totals["data.vllm:kv_offload_load_bytes.()"]
    # the run's point: the GPU's 700 blocks miss most returning prefixes, the CPU tier serves them
    assert gpu["hit_rate"] < 0.1 < 0.7 < cpu["hit_rate"]
    assert cpu["loaded_bytes"] > cpu["stored_bytes"] > 2 * 2**30
    assert [t["medium"] for t in rep["kv_tiers"][:2]] == ["GPU", "CPU"] and cpu["store_bytes_per_s"] > 0
    assert rep["preemption"]["count"] == rep["preemptions"]  # forensics: every preemption has a row


def test_offload_attach_session_equals_the_server_counters() -> None:
    rep = _report("gpu_h200_offload_attach")
    server = _counts("gpu_h200_offload_attach_server_counts")["counters"]
    assert rep["preemptions"] == server["preemptions"] == 50
    assert rep["requests_finished"] == server["finished"]
    assert rep["prefix_cache"]["queries_tokens"] == server["prefix_queries_tokens"]
    assert rep["prefix_cache"]["hits_tokens"] == server["prefix_hits_tokens"]


def test_offload_metrics_fixture_matches_the_attached_session() -> None:
    """The /metrics text saved at the end of that server's run: every offload family the issue
    names is there, and its totals are what the attach session recorded."""
    samples: dict[str, float] = {}
    text = (FIXTURES / "metrics_offload_vllm026.txt").read_text()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())
                                   if k not in ("engine", "model_name"))
            samples[key] = s.value
    for name in ("vllm:kv_offload_store_bytes_total", "vllm:kv_offload_load_bytes_total",
                 "vllm:kv_offload_store_time_total", "vllm:kv_offload_load_time_total",
                 "vllm:kv_offload_cpu_cache_usage_perc", "vllm:kv_offload_lookup_sync_delay_seconds_count",
                 "vllm:kv_offload_total_bytes_total|transfer_type=GPU_to_CPU",
                 "vllm:external_prefix_cache_queries_total", "vllm:external_prefix_cache_hits_total",
                 "vllm:prompt_tokens_by_source_total|source=external_kv_transfer",
                 "vllm:prompt_tokens_cached_total", "vllm:kv_block_lifetime_seconds_count",
                 "vllm:kv_block_idle_before_evict_seconds_count", "vllm:kv_block_reuse_gap_seconds_count"):
        assert name in samples, name
    # declared, no sample yet: no allocation failed in this run
    assert "# TYPE vllm:kv_offload_allocation_failure_total counter" in text
    cpu = _tier(_report("gpu_h200_offload_attach"), "CPU")
    assert cpu["stored_bytes"] == samples["vllm:kv_offload_store_bytes_total"]
    assert cpu["loaded_bytes"] == samples["vllm:kv_offload_load_bytes_total"]
    # the deprecated per-direction shape says the same
    assert samples["vllm:kv_offload_total_bytes_total|transfer_type=CPU_to_GPU"] == cpu["loaded_bytes"]
    assert cpu["queries_tokens"] == samples["vllm:external_prefix_cache_queries_total"]
    assert cpu["hits_tokens"] == samples["vllm:external_prefix_cache_hits_total"]
    assert samples["vllm:prompt_tokens_by_source_total|source=external_kv_transfer"] == cpu["hits_tokens"]


def test_scheduler_stats_fixture_is_what_vllm_026_carried() -> None:
    """Raw SchedulerStats of the recorded offload run's first steps: the connector's
    self-describing ``{"types", "data"}`` shape, eviction samples, connector prefix stats."""
    steps = json.loads((FIXTURES / "scheduler_stats_offload_vllm026.json").read_text())
    rows = steps["vllm_steps_with_data"]
    assert len(rows) == 60
    kvc = [r["kv_connector_stats"] for r in rows]
    assert all(set(k) == {"types", "data"} and set(k["types"]) == set(k["data"]) for k in kvc)
    stores = [k["data"]["vllm:kv_offload_store_bytes"]["()"] for k in kvc
              if "vllm:kv_offload_store_bytes" in k["data"]]
    assert stores and all(isinstance(b, int) and b > 0 for b in stores)
    assert {k["types"]["vllm:kv_offload_lookup_sync_delay_seconds"] for k in kvc
            if "vllm:kv_offload_lookup_sync_delay_seconds" in k["types"]} == {"histogram"}
    events = [e for r in rows for e in r["kv_cache_eviction_events"]]
    assert events and set(events[0]) >= {"lifetime_seconds", "idle_seconds", "reuse_gaps_seconds"}
    assert all(r["connector_prefix_cache_stats"]["__type__"] == "PrefixCacheStats" for r in rows)


def test_eagle_session_equals_the_independent_logger_and_shows_the_memory_swing() -> None:
    eagle, off = _report("gpu_h200_spec_eagle"), _report("gpu_h200_spec_off")
    c = _counts("gpu_h200_spec_eagle_counts")
    sd = eagle["spec_decode"]
    assert sd["method"] == "eagle"
    assert (sd["drafts"], sd["draft_tokens"], sd["accepted_tokens"]) == (
        c["spec_drafts"], c["spec_draft_tokens"], c["spec_accepted_tokens"])
    assert sd["accepted_per_position"] == c["spec_accepted_per_pos"]
    assert sd["draft_tokens"] == 3 * sd["drafts"]  # num_speculative_tokens=3
    assert off["spec_decode"] is None
    assert eagle["steps"] == c["steps"] and off["steps"] == _counts("gpu_h200_spec_off_counts")["steps"]
    # the drafter (one Llama layer of width 4096 + its fc) costs weights, and so KV blocks
    gib = 2**30
    assert 0.3 < (eagle["memory"]["weights_bytes"] - off["memory"]["weights_bytes"]) / gib < 0.7
    assert eagle["engine"]["num_gpu_blocks"] < off["engine"]["num_gpu_blocks"]


def test_eagle_drafter_weights_are_the_heads_own_parameters() -> None:
    """vLLM 0.26 runs Llama on its V2 GPU model runner, whose drafter is ``speculator``
    (re-recorded 2026-11-30 after the fix; the first session said n/a). The EAGLE-1 head of
    bench/gpu/eagle_config.py: fc (2 x 4096 -> 4096), one Llama layer (q, o 4096x4096; k, v
    4096x1024; MLP 3 x 4096x14336), its post-attention norm (layer 0 has no input norm); the
    embedding and LM head are the target's."""
    eagle, off = _report("gpu_h200_spec_eagle"), _report("gpu_h200_spec_off")
    h, kv, ffn = 4096, 1024, 14336
    params = 2 * h * h + (2 * h * h + 2 * h * kv) + 3 * h * ffn + h
    assert eagle["memory"]["drafter_weights_bytes"] == 2 * params == 503_324_672  # bf16
    swing = eagle["memory"]["weights_bytes"] - off["memory"]["weights_bytes"]
    assert abs(swing - eagle["memory"]["drafter_weights_bytes"]) / swing < 0.01
    assert off["memory"]["drafter_weights_bytes"] is None
