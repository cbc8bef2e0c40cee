"""KV offloading as the lent H200 recorded it (vLLM 0.26, native CPU offloading), when the run's
files are in the checkout: ``python bench/gpu_offload.py MODEL OUT`` on the GPU, then

* ``OUT/gpu_h200_offload.kvscope`` → ``sessions/`` (WAL folded in, as ``make_sessions.finalize``),
* ``OUT/gpu_h200_offload_counts.json`` → ``bench/results/``,
* ``OUT/metrics_offload_vllm026{,_before}.txt`` → ``tests/fixtures/``.

Until then these tests skip with that reason: CPU vLLM cannot run an offloading connector, and the
CPU-side checks of the same code paths are in ``test_kv_tiers_vllm.py``. The references are the
independent StatLoggerBase of the same run and the server's own /metrics text.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from profiler.analysis.report import build_report
from profiler.session.reader import open_session
from tests.support.engine import ROOT

SESSION = ROOT / "sessions" / "gpu_h200_offload.kvscope"
COUNTS = ROOT / "bench" / "results" / "gpu_h200_offload_counts.json"
FIXTURES = ROOT / "tests" / "fixtures"
AFTER, BEFORE = FIXTURES / "metrics_offload_vllm026.txt", FIXTURES / "metrics_offload_vllm026_before.txt"

pytestmark = pytest.mark.skipif(
    not (SESSION.exists() and COUNTS.exists() and AFTER.exists() and BEFORE.exists()),
    reason="the GPU offloading run (bench/gpu_offload.py on the lent H200) is not in this checkout")


def _connector_total(counts: dict, metric: str) -> float:
    """The independent logger's sum of one metric of ``kv_connector_stats`` (any label key)."""
    return sum(v for k, v in counts["kv_connector_stats"].items()
               if metric in k and not k.endswith((".n", ".sum")))


def test_recorded_tiers_equal_the_stats_vllm_reported() -> None:
    counts = json.loads(COUNTS.read_text())
    with open_session(SESSION) as s:
        t = s.table("tier_samples")
        assert s.notes() == []
    cpu = t[t["medium"] == "CPU"]
    assert counts["connector_queries"] > 0 and len(cpu)
    assert int(cpu["queries_tokens"].sum()) == counts["connector_queries"]
    assert int(t["hits_tokens"].sum()) == counts["connector_hits"]
    for column, metric in (("stored_bytes", "vllm:kv_offload_store_bytes"),
                           ("loaded_bytes", "vllm:kv_offload_load_bytes")):
        assert cpu[column].sum() == pytest.approx(_connector_total(counts, metric))
    assert cpu["stored_bytes"].sum() > 0


def test_report_has_the_cpu_tier_and_every_preemption() -> None:
    counts = json.loads(COUNTS.read_text())
    with open_session(SESSION) as s:
        rep = build_report(s)
        evictions = s.scalar("SELECT COUNT(*) FROM kv_evictions")
    gpu, cpu = rep["kv_tiers"][:2]
    assert (gpu["medium"], cpu["medium"]) == ("GPU", "CPU")
    assert cpu["stored_bytes"] > 0 and cpu["store_bytes_per_s"] > 0
    assert rep["preemption"]["count"] == rep["preemptions"] == counts["preemptions"]
    assert evictions == counts["eviction_events"]


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_attach_reads_the_real_servers_offload_metrics() -> None:
    from profiler.attach import tier_metrics
    from profiler.attach.metrics import parse_metrics

    before, after = BEFORE.read_text(), AFTER.read_text()
    tracker = tier_metrics.TierTracker()
    rows = []
    for i, text in enumerate((before, after)):
        values = tier_metrics.tier_values(parse_metrics(text, float(i)).extra)["0"]
        rows += tracker.rows(values, 1, float(i), False)[0]
    (cpu, *_) = rows
    flat = "vllm:kv_offload_store_bytes_total"
    legacy = ("vllm:kv_offload_total_bytes_total", {"transfer_type": "GPU_to_CPU"})
    expected = _counter(after, flat) - _counter(before, flat)
    if not expected:  # a version with only the deprecated, labelled counter
        expected = _counter(after, legacy[0], **legacy[1]) - _counter(before, legacy[0], **legacy[1])
    assert expected > 0 and cpu.stored_bytes == pytest.approx(expected)
    hits = _counter(after, "vllm:external_prefix_cache_hits_total") - \
        _counter(before, "vllm:external_prefix_cache_hits_total")
    assert cpu.medium == "CPU" and cpu.hits_tokens == pytest.approx(hits)
