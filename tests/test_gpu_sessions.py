"""GPU code paths (NVML, allocator sampling, start-up profile, CUDA OOM) on sessions recorded by
kvscope on a real H200 with vLLM 0.26.0 (bench/gpu_scenarios.sh); CI has no GPU, the data is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.analysis.report import build_report
from profiler.session.reader import open_session

SESSIONS = Path(__file__).resolve().parent.parent / "sessions"
GIB = 2**30


def _session(name: str):
    return open_session(SESSIONS / f"{name}.kvscope")


def test_h200_healthy_has_nvml_allocator_and_startup_breakdown() -> None:
    s = _session("gpu_h200_healthy")
    rep = build_report(s)
    counts = json.loads((SESSIONS.parent / "bench/results/gpu_h200_healthy_counts.json").read_text())
    assert rep["session"]["vllm_version"] == "0.26.0"
    assert rep["steps"] == counts["steps"] and rep["requests_finished"] == counts["finished"]
    assert rep["prefix_cache"]["hits_tokens"] == counts["prefix_hits"]
    gpu0 = rep["gpus"][0]
    assert gpu0["name"] == "NVIDIA H200" and 139 * GIB < gpu0["total_bytes"] < 141 * GIB
    # Llama-3-8B in bf16: 8.03e9 parameters x 2 bytes = 14.96 GiB, as vLLM measured it
    assert rep["memory"]["weights_bytes"] / GIB == pytest.approx(14.96, abs=0.01)
    assert rep["memory"]["kv_cache_bytes"] / GIB == pytest.approx(102.6, abs=0.5)
    assert rep["memory"]["activation_peak_bytes"] > 0 and rep["memory"]["non_torch_bytes"] > 0
    # NVML sees the engine: peak used covers weights + KV cache
    assert gpu0["peak_used_bytes"] > rep["memory"]["weights_bytes"] + rep["memory"]["kv_cache_bytes"]
    alloc = s.table("allocator_samples")
    assert len(alloc) > 100
    assert (alloc["reserved_bytes"] >= alloc["allocated_bytes"]).all()
    roles = s.table("processes")
    procs = s.table("gpu_process_samples").merge(roles, on="pid")
    assert set(procs["role"]) >= {"worker", "engine_core"}  # TP=1: the worker lives in the engine core


def test_h200_kv_pressure_preempts_and_matches_engine_counts() -> None:
    rep = build_report(_session("gpu_h200_kv_pressure"))
    counts = json.loads((SESSIONS.parent / "bench/results/gpu_h200_kv_pressure_counts.json").read_text())
    assert rep["preemptions"] == counts["preemptions"] == 879
    assert rep["steps"] == counts["steps"]
    assert rep["engine"]["num_gpu_blocks"] == 600 and rep["engine"]["block_size"] == 16
    assert rep["kv_cache"]["peak_usage_frac"] == pytest.approx(1.0)


def test_h200_tp2_has_one_worker_per_gpu() -> None:
    s = _session("gpu_h200x2_tp2")
    workers = s.table("processes", "WHERE role = 'worker'").sort_values("rank")
    assert list(workers["rank"]) == [0, 1]
    alloc = s.table("allocator_samples")
    by_pid = alloc.groupby("pid")["device_index"].unique()
    assert sorted(int(d[0]) for d in by_pid) == [0, 1]  # each rank's allocator on its own GPU
    nv = s.table("gpu_process_samples")
    for _, w in workers.iterrows():
        mine = nv[nv["pid"] == w["pid"]]
        assert set(mine["device_index"]) == {int(w["rank"])}
        assert mine["used_bytes"].max() > 100 * GIB
    startup = s.table("startup_memory")
    assert sorted(startup["rank"]) == [0, 1]
    assert (startup["weights_bytes"] / GIB).round(2).tolist() == [7.48, 7.48]  # half of 8B each
    assert int(s.table("engines")["tensor_parallel_size"].iloc[0]) == 2


def test_h200_startup_oom_keeps_engine_core_text() -> None:
    s = _session("gpu_h200_oom_startup")
    ev = s.table("events")
    oom = ev[ev["kind"] == "oom"]
    assert len(oom) == 1
    role = s.table("processes", "WHERE pid = ?", (int(oom["pid"].iloc[0]),))["role"]
    assert "engine_core" in set(role)
    assert oom["message"].iloc[0].startswith("ValueError: No available memory for the cache blocks")
    frontend = ev[ev["kind"] == "error"]["message"].iloc[0]
    assert "Engine core initialization failed" in frontend  # what the frontend alone would say
    mem = json.loads(oom["details_json"].iloc[0])["memory"]
    assert mem["device_index"] == 0 and mem["allocated_bytes"] > 14 * GIB  # weights were loaded


def test_h200_runtime_oom_records_cuda_error_and_foreign_process() -> None:
    s = _session("gpu_h200_oom_runtime")
    ev = s.table("events")
    assert list(ev["kind"]).index("engine_start") < list(ev["kind"]).index("oom")  # while serving
    oom = ev[ev["kind"] == "oom"].iloc[0]
    assert oom["message"].startswith("OutOfMemoryError: CUDA out of memory.")
    details = json.loads(oom["details_json"])
    assert details["where"] == "worker: execute_model"
    assert details["memory"]["ooms"] >= 1 and details["memory"]["free_bytes"] < 256 * 2**20
    ours = set(s.table("processes")["pid"])
    procs = s.table("gpu_process_samples")
    assert set(procs["pid"]) - ours  # another process appeared on the engine's GPU
    dev = s.table("gpu_samples", "WHERE device_index = 0")
    # it took the headroom: the device filled up to its last ~250 MiB just before the OOM
    assert (dev["total_bytes"] - dev["used_bytes"]).min() < 256 * 2**20


def test_h200_allocator_fragmentation_is_diagnosed() -> None:
    """Real caching-allocator fragmentation on an H200, recorded by kvscope's own allocator and
    NVML collectors (bench/gpu_fragmentation.py: a torch process, no vLLM)."""
    from profiler.analysis.diagnosis import diagnose

    s = _session("gpu_h200_fragmentation")
    alloc = s.table("allocator_samples")
    slack = alloc["reserved_bytes"] - alloc["allocated_bytes"]
    assert slack.max() == 7.5 * GIB  # 120 freed 64 MiB blocks that 96 MiB requests cannot reuse
    frag = [f for f in diagnose(s) if f.code == "GPU_MEMORY_PRESSURE"]
    assert len(frag) == 1 and "fragmentation" in frag[0].message
    assert frag[0].metrics["max_slack_bytes"] == 7.5 * GIB
    assert "expandable_segments" in (frag[0].recommendation or "")
