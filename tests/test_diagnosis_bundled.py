"""Diagnosis on the bundled real sessions (sessions/): CPU scenarios and H200 recordings, no engine.

The GPU-only causes (runtime CUDA OOM, start-up without KV memory, capped KV cache under load)
are checked here on sessions recorded on a lent H200 (vLLM 0.26.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.analysis.diagnosis import Finding, diagnose
from profiler.analysis.report import build_report
from profiler.analysis.whatif import analyse
from profiler.session.reader import open_session

SESSIONS = Path(__file__).resolve().parent.parent / "sessions"
ALARMS = ("warning", "critical")


def _diagnose(name: str) -> tuple[list[Finding], dict]:
    session = open_session(SESSIONS / name)
    findings = diagnose(session)
    return findings, build_report(session, [f.as_dict() for f in findings])


def _one(findings: list[Finding], code: str) -> Finding:
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, [f.code for f in findings]
    return hits[0]


@pytest.mark.parametrize("name", ["healthy.kvscope", "gpu_h200_healthy.kvscope",
                                  "gpu_h200x2_tp2.kvscope"])
def test_healthy_bundled_sessions_have_nothing_alarming(name: str) -> None:
    findings, report = _diagnose(name)
    assert report["requests_finished"] > 0 and report["preemptions"] == 0
    assert [f.code for f in findings if f.severity in ALARMS] == []
    json.dumps(report["findings"], allow_nan=False)


def test_cpu_kv_saturation_session() -> None:
    findings, report = _diagnose("kv_saturation.kvscope")
    sat = _one(findings, "KV_SATURATION")
    assert sat.severity in ALARMS and sat.metrics["needed_blocks"] > report["engine"]["num_gpu_blocks"]
    storm = _one(findings, "PREEMPTION_STORM")
    assert storm.metrics["preemptions"] == report["preemptions"] > 0


def test_cpu_prefix_thrash_session_and_its_whatif() -> None:
    findings, report = _diagnose("prefix_thrash.kvscope")
    f = _one(findings, "PREFIX_THRASH")
    have = report["engine"]["num_gpu_blocks"]
    assert f.metrics["needed_blocks"] > have
    assert f.settings == {"num_gpu_blocks_override": f.metrics["needed_blocks"]}
    w = analyse(open_session(SESSIONS / "prefix_thrash.kvscope"))
    assert abs(w.curve.hit_rate(have) - report["prefix_cache"]["hit_rate"]) <= 0.05
    assert w.curve.hit_rate(f.metrics["needed_blocks"]) >= 0.9 * w.curve.max_hit_rate


def test_gpu_kv_pressure_names_the_override_as_the_cap() -> None:
    findings, report = _diagnose("gpu_h200_kv_pressure.kvscope")
    sat = _one(findings, "KV_SATURATION")
    assert sat.severity == "critical"
    have = report["engine"]["num_gpu_blocks"]
    need = sat.metrics["needed_blocks"]
    assert need > have
    # start-up measured room for far more blocks than the override allowed: raise the override
    assert sat.settings == {"num_gpu_blocks_override": need}
    assert "start-up measured room for" in sat.recommendation
    storm = _one(findings, "PREEMPTION_STORM")
    assert storm.metrics["preemptions"] == report["preemptions"] > 0
    assert storm.metrics["preempted_requests"] is None  # vLLM 0.26 reports no per-request count
    expected = (report["prefix_cache"]["preempted_queries_tokens"]
                - report["prefix_cache"]["preempted_hits_tokens"])
    assert storm.metrics["recomputed_tokens"] == expected > 0


def test_gpu_runtime_oom_blames_the_other_process() -> None:
    findings, report = _diagnose("gpu_h200_oom_runtime.kvscope")
    assert report["events"]["oom"] == 1
    f = _one(findings, "OOM_RUNTIME")
    assert not [x for x in findings if x.code == "OOM_STARTUP"]
    assert f.severity == "critical" and f.metrics["where"] == "worker: execute_model"
    assert f.metrics["cause"] == "other processes"
    session = open_session(SESSIONS / "gpu_h200_oom_runtime.kvscope")
    own = set(session.table("processes")["pid"])
    (foreign,) = f.metrics["foreign_processes"]
    assert foreign["pid"] not in own and foreign["used_bytes"] > 2**30
    oom = session.table("events", "WHERE kind = 'oom'").iloc[0]
    assert f"Process {foreign['pid']} has" in oom["message"]
    assert f.metrics["free_bytes"] < f.metrics["total_bytes"] * 0.01  # the device really was full
    util = report["engine"]["gpu_memory_utilization"]
    total = f.metrics["total_bytes"]
    assert f.settings["gpu_memory_utilization"] <= util - foreign["used_bytes"] / total + 1e-9
    assert f.t_start_s <= f.t_end_s <= report["session"]["duration_s"]


def test_gpu_startup_without_kv_memory_names_the_budget() -> None:
    findings, _ = _diagnose("gpu_h200_oom_startup.kvscope")
    f = _one(findings, "OOM_STARTUP")
    assert not [x for x in findings if x.code == "OOM_RUNTIME"]
    m = f.metrics
    assert m["used_before_kv_bytes"] > m["budget_bytes"]
    assert m["weights_bytes"] > m["activation_peak_bytes"]
    assert f.settings["gpu_memory_utilization"] > m["gpu_memory_utilization_floor"] > m["gpu_memory_utilization"]
    assert f"→ ≥ {f.settings['gpu_memory_utilization']:.2f}" in f.recommendation
