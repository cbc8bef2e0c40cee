"""Diagnosis on real CPU-engine scenarios with a known cause: each gets its finding, with its numbers.

Every scenario is recorded once per test run (tests/scenarios.py) and checked here from the
Python API and through ``kvscope report --json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.analysis.diagnosis import Finding, diagnose
from profiler.analysis.whatif import analyse
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import kvscope

pytestmark = pytest.mark.engine

GPU_CODES = {"OOM_RUNTIME", "GPU_MEMORY_PRESSURE"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "scenarios"


def _run(s: sc.Scenario, tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    rec = sc.recorded(s, tiny_model, base)
    out = kvscope("report", "--json", str(rec.path))
    assert out.returncode == 0, out.stderr
    session = open_session(rec.path)
    try:
        return rec, diagnose(session), json.loads(out.stdout)
    finally:
        session.close()


def _one(findings: list[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, [f.code for f in findings]
    return hits[0]


def _codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


@pytest.fixture(scope="module")
def healthy(tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    return _run(sc.HEALTHY, tiny_model, base)


@pytest.fixture(scope="module")
def saturation(tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    return _run(sc.SATURATION, tiny_model, base)


@pytest.fixture(scope="module")
def thrash(tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    return _run(sc.THRASH, tiny_model, base)


@pytest.fixture(scope="module")
def startup_oom(tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    return _run(sc.STARTUP_OOM, tiny_model, base)


@pytest.fixture(scope="module")
def queueing(tiny_model: Path, base: Path) -> tuple[sc.Recorded, list[Finding], dict]:
    return _run(sc.QUEUEING, tiny_model, base)


def _check_range(f: Finding, report: dict) -> None:
    duration = report["session"]["duration_s"]
    assert f.t_start_s is not None and f.t_end_s is not None
    assert 0 <= f.t_start_s <= f.t_end_s <= duration + 1.0


def test_healthy_session_has_nothing_alarming(healthy: tuple) -> None:
    rec, findings, report = healthy
    assert rec.returncode == 0, rec.output_tail
    assert report["preemptions"] == 0 and report["prefix_cache"]["hit_rate"] > 0.5  # it served
    assert [f.code for f in findings if f.severity in ("warning", "critical")] == []
    assert [f["severity"] for f in report["findings"] if f["severity"] != "info"] == []


def test_saturation_is_found_with_peak_demand_and_a_bigger_cache(saturation: tuple) -> None:
    rec, findings, report = saturation
    assert rec.returncode == 0, rec.output_tail
    f = _one(findings, "KV_SATURATION")
    assert f.severity in ("warning", "critical") and f.engine_id == 1
    _check_range(f, report)
    m = f.metrics
    assert m["max_waiting"] > 0 and m["busy_frac"] >= 0.15
    # 32 sequences (max_num_seqs) of ~6 blocks sharing 2 prefixes of 4 blocks: well above 24
    assert 24 < m["needed_blocks"] <= 32 * 6 + 1
    assert f.settings == {"num_gpu_blocks_override": m["needed_blocks"]}
    assert f"--num-gpu-blocks-override {m['needed_blocks']}" in f.recommendation
    assert "of 24 blocks" in f.message
    # one recommendation: the cache size; shrinking the batch to what 24 blocks hold is not offered
    assert "--max-num-seqs" not in f.recommendation and " or " not in f.recommendation
    assert 1 <= m["seqs_that_fit"] < 32


def test_saturation_session_has_a_preemption_storm_with_recomputed_tokens(saturation: tuple) -> None:
    _, findings, report = saturation
    f = _one(findings, "PREEMPTION_STORM")
    _check_range(f, report)
    assert f.metrics["preemptions"] == report["preemptions"] >= 5
    assert f.metrics["preempted_requests"] >= 0.1 * report["requests_finished"]
    expected = (report["prefix_cache"]["preempted_queries_tokens"]
                - report["prefix_cache"]["preempted_hits_tokens"])
    assert f.metrics["recomputed_tokens"] == expected > 0
    assert f"{expected:,} prompt tokens were recomputed" in f.message


def test_thrash_is_found_with_the_cache_size_that_keeps_the_prefixes(thrash: tuple) -> None:
    rec, findings, report = thrash
    assert rec.returncode == 0, rec.output_tail
    f = _one(findings, "PREFIX_THRASH")
    _check_range(f, report)
    m = f.metrics
    assert m["measured_hit_rate"] == pytest.approx(report["prefix_cache"]["hit_rate"])
    assert m["max_hit_rate"] - m["measured_hit_rate"] >= 0.10
    # ten 4-block prefixes recurring in shuffled rounds need more than the 24 blocks they got
    assert 24 < m["needed_blocks"] <= 10 * 5 + 3
    assert f.settings == {"num_gpu_blocks_override": m["needed_blocks"]}
    assert m["evicted_requests"] > 0
    # 2 clients, no waiting: neither saturation nor queueing
    assert not _codes(findings) & {"KV_SATURATION", "QUEUEING", "PREEMPTION_STORM"}


def test_thrash_model_matches_the_measured_hit_rate_at_the_recorded_size(thrash: tuple) -> None:
    rec, _, _ = thrash
    w = analyse(open_session(rec.path))
    assert w.actual.num_blocks == 24
    assert abs(w.curve.hit_rate(24) - w.actual.hit_rate) <= 0.05


def test_startup_refusal_for_max_model_len_becomes_oom_startup_with_numbers(startup_oom: tuple) -> None:
    rec, findings, report = startup_oom
    assert rec.returncode != 0  # vLLM really refused to start
    assert report["events"].get("oom", 0) >= 1
    f = _one(findings, "OOM_STARTUP")
    assert f.severity == "critical"
    m = f.metrics
    assert m["max_model_len"] == 4096
    # 8 blocks of 128 minus vLLM's null block: 896 tokens; 4096 tokens need 32 blocks + the null one
    assert m["largest_max_model_len"] == 896 == (8 - 1) * 128
    assert m["blocks_needed"] == 33
    assert m["blocks_available"] == 8
    assert f.settings == {"max_model_len": 896}
    assert "--max-model-len 896" in f.recommendation
    assert "--num-gpu-blocks-override 33" not in f.recommendation  # one recommendation ...
    assert any("--num-gpu-blocks-override 33" in o for o in m["other_options"])  # ... the rest kept
    options = " ".join([f.recommendation, *m["other_options"]])
    assert "fp8" not in options and "tensor-parallel" not in options  # CPU
    assert "max_model_len 4,096 request needs 33 KV blocks of 128" in f.message
    assert "the cache has 8, room for 896 tokens" in f.message


def test_queueing_behind_max_num_seqs_with_kv_room(queueing: tuple) -> None:
    rec, findings, report = queueing
    assert rec.returncode == 0, rec.output_tail
    f = _one(findings, "QUEUEING")
    _check_range(f, report)
    assert f.metrics["limit"] == "max_num_seqs"
    assert f.metrics["kv_usage_frac_max"] < 0.5 and f.metrics["max_waiting"] > 0
    assert f.metrics["queued_s_p50"] > 0
    assert 2 < f.settings["max_num_seqs"] <= 24  # more than now, no more than ever waited
    assert "--max-num-seqs 2 →" in f.recommendation
    over = _one(findings, "KV_OVERPROVISIONED")
    assert over.severity == "info" and over.metrics["peak_kv_usage_frac"] <= 0.5
    assert not _codes(findings) & {"KV_SATURATION", "PREEMPTION_STORM", "PREFIX_THRASH"}


def test_cpu_sessions_get_no_gpu_findings(healthy: tuple, saturation: tuple, thrash: tuple,
                                          startup_oom: tuple, queueing: tuple) -> None:
    for rec, findings, report in (healthy, saturation, thrash, startup_oom, queueing):
        assert report["gpus"] == []  # CPU: no NVML rows
        assert not _codes(findings) & GPU_CODES, rec.scenario.name


def test_report_json_carries_the_same_findings(saturation: tuple) -> None:
    _, findings, report = saturation
    assert report["findings"] == [f.as_dict() for f in findings]
    json.dumps(report["findings"], allow_nan=False)  # strict JSON
