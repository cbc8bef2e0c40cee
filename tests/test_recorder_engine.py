"""The three ways in, against a real vLLM CPU engine: the session equals what vLLM itself counted.

Each test runs a real workload that makes real preemptions and prefix-cache hits; an independent
StatLoggerBase inside the recorded program counts what vLLM reported, and the session must match.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.checks import own_counts_match
from tests.support.engine import ROOT, WORKLOAD, engine_env, engine_lock, kvscope

pytestmark = pytest.mark.engine

PRESSURE = ["--blocks", "24", "--requests", "64", "--prefixes", "2", "--prefix-len", "600",
            "--max-tokens", "48"]


def _report(path: Path) -> dict:
    out = kvscope("report", "--json", str(path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_matches_counts(rep: dict, counts: dict) -> None:
    assert counts["preemptions"] > 0 and counts["prefix_hits"] > 0  # the workload is real pressure
    assert rep["steps"] == counts["steps"]
    assert rep["preemptions"] == counts["preemptions"]
    assert rep["prefix_cache"]["queries_tokens"] == counts["prefix_queries"]
    assert rep["prefix_cache"]["hits_tokens"] == counts["prefix_hits"]
    assert rep["requests_finished"] == counts["finished"]
    assert rep["engine"]["num_gpu_blocks"] == counts["num_gpu_blocks"]
    assert rep["engine"]["block_size"] == counts["block_size"]


@pytest.fixture(scope="module")
def cli_llmengine_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    d = tmp_path_factory.mktemp("cli")
    session, counts = d / "run.kvscope", d / "counts.json"
    with engine_lock():
        proc = kvscope("record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                       str(tiny_model), "--engine", "llmengine", "--counts", str(counts), *PRESSURE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return session, json.loads(counts.read_text()), proc.returncode


def test_record_cli_llmengine_equals_engine_counts(cli_llmengine_run: tuple[Path, dict, int]) -> None:
    session, counts, _ = cli_llmengine_run
    rep = _report(session)
    _assert_matches_counts(rep, counts)
    assert rep["session"]["complete"] is True
    assert rep["session"]["vllm_version"] == "0.32.0"
    assert rep["engine"]["enable_prefix_caching"] is True
    assert rep["kv_cache"]["peak_usage_frac"] == pytest.approx(1.0)
    assert rep["latency_s"]["ttft_p50"] > 0 and rep["latency_s"]["e2e_p99"] >= rep["latency_s"]["e2e_p50"]


def test_record_cli_keeps_process_roles_and_startup_memory(cli_llmengine_run: tuple[Path, dict, int]) -> None:
    session, _, _ = cli_llmengine_run
    conn = sqlite3.connect(session)
    roles = {r for (r,) in conn.execute("SELECT role FROM processes")}
    assert roles == {"recorder", "frontend", "engine_core", "worker"}
    pids = dict(conn.execute("SELECT role, pid FROM processes"))
    assert len(set(pids.values())) == 4  # four real processes
    device, kv_bytes = conn.execute("SELECT device, kv_cache_bytes FROM startup_memory").fetchone()
    assert device == "cpu" and kv_bytes == 1 << 30  # VLLM_CPU_KVCACHE_SPACE=1 GiB, as vLLM reports
    kinds = [k for (k,) in conn.execute("SELECT kind FROM events")]
    assert kinds.count("nvml_off") == 1 and kinds.count("allocator_off") == 1  # said once, why
    reqs = conn.execute("SELECT COUNT(*), SUM(preemptions), SUM(cached_tokens) FROM requests").fetchone()
    assert reqs[0] == 64 and reqs[1] > 0 and reqs[2] > 0
    blocks = conn.execute("SELECT COUNT(*), MIN(LENGTH(block_hashes)) FROM prompt_blocks").fetchone()
    assert blocks == (64, 8 * 4)  # 600+ byte prompts: 4 full blocks of 128 tokens, int64 each


def test_record_llm_class_without_user_stats(tiny_model: Path, tmp_path: Path) -> None:
    """vllm.LLM turns stats off by default; kvscope still records every step and request."""
    session = tmp_path / "llm.kvscope"
    with engine_lock():
        proc = kvscope("record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                       str(tiny_model), "--engine", "llm", *PRESSURE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Avg prompt throughput" not in proc.stdout + proc.stderr  # vLLM's own logger stays off
    with sqlite3.connect(session) as conn:
        (start,) = conn.execute(
            "SELECT details_json FROM events WHERE kind = 'engine_start'").fetchone()
    assert json.loads(start)["step_counts"] == "kvscope"  # vLLM's frontend stats stay off
    rep = _report(session)
    assert rep["requests_finished"] == 64
    assert rep["steps"] > 64 and rep["preemptions"] > 0
    assert rep["prefix_cache"]["hits_tokens"] > 0


def test_record_api_asyncllm_equals_engine_counts(tiny_model: Path, tmp_path: Path) -> None:
    """``with profiler.record(path):`` around an AsyncLLM, in the same process."""
    session, counts = tmp_path / "api.kvscope", tmp_path / "counts.json"
    with engine_lock():
        proc = subprocess.run(
            [sys.executable, str(WORKLOAD), str(tiny_model), "--engine", "async", "--api-session",
             str(session), "--counts", str(counts), *PRESSURE],
            capture_output=True, text=True, timeout=600, env=engine_env(), cwd=ROOT,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = _report(session)
    _assert_matches_counts(rep, json.loads(counts.read_text()))
    assert rep["session"]["complete"] is True


def test_kill9_mid_run_keeps_readable_session(tiny_model: Path, tmp_path: Path) -> None:
    session = tmp_path / "killed.kvscope"
    with engine_lock():
        proc = subprocess.Popen(
            [sys.executable, "-m", "profiler.cli", "record", "--session", str(session), "--",
             sys.executable, str(WORKLOAD), str(tiny_model), "--requests", "4000", "--blocks", "24",
             "--arrivals-per-step", "2"],
            env=engine_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            steps = 0
            while time.monotonic() < deadline and steps < 200:
                time.sleep(1.0)
                if session.exists():
                    try:
                        steps = sqlite3.connect(session, timeout=5).execute(
                            "SELECT COUNT(*) FROM steps").fetchone()[0]
                    except sqlite3.OperationalError:
                        steps = 0
            assert steps >= 200, "engine never got going"
            killed_at = time.time()
            os.killpg(proc.pid, signal.SIGKILL)  # the recorder and every vLLM process at once
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    rep = _report(session)
    assert rep["session"]["complete"] is False
    assert rep["steps"] >= steps
    last = sqlite3.connect(session).execute("SELECT MAX(t_unix_s) FROM steps").fetchone()[0]
    assert killed_at - last < 1.0  # at most the last second is lost


def test_startup_refusal_becomes_oom_event_from_engine_core(tiny_model: Path, tmp_path: Path) -> None:
    """max_model_len 4096 with 8 blocks of 128: vLLM refuses in the engine core; kvscope keeps why."""
    session = tmp_path / "oom.kvscope"
    with engine_lock():
        proc = kvscope("record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                       str(tiny_model), "--blocks", "8", "--max-model-len", "4096")
    assert proc.returncode != 0
    conn = sqlite3.connect(session)
    ooms = conn.execute(
        "SELECT e.message, e.details_json, p.role FROM events e JOIN processes p ON p.pid = e.pid "
        "WHERE e.kind = 'oom'").fetchall()
    assert len(ooms) == 1, conn.execute("SELECT kind, pid, message FROM events").fetchall()
    message, details, role = ooms[0]
    assert role == "engine_core"
    assert "To serve at least one request with the model's max seq len (4096)" in message
    assert "896" in message  # vLLM's own estimate of the largest max_model_len that fits
    memory = json.loads(details)["memory"]
    assert memory["host_total_bytes"] > 0  # the memory state at that moment (CPU: host RAM)
    rep = _report(session)
    assert rep["session"]["complete"] is True and rep["events"]["oom"] == 1


def test_forked_engine_processes_each_record_once(tiny_model: Path, tmp_path: Path) -> None:
    """vLLM forks its processes when CUDA is not initialised (as on GPUs): no inherited rows."""
    session, counts = tmp_path / "fork.kvscope", tmp_path / "counts.json"
    env = engine_env(VLLM_WORKER_MULTIPROC_METHOD="fork")
    with engine_lock():
        proc = kvscope("record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                       str(tiny_model), "--counts", str(counts), *PRESSURE, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    conn = sqlite3.connect(session)
    rows = conn.execute("SELECT role, pid FROM processes ORDER BY role").fetchall()
    assert [r for r, _ in rows] == ["engine_core", "frontend", "recorder", "worker"], rows
    assert len({p for _, p in rows}) == 4
    kv = json.loads(conn.execute(
        "SELECT details_json FROM events WHERE kind = 'kv_cache_config'").fetchone()[0])
    assert kv["num_blocks"] == 24 and kv["bytes_per_block"] > 0
    _assert_matches_counts(_report(session), json.loads(counts.read_text()))


@pytest.mark.parametrize("engine", ["llmengine", "async"])
def test_kvscope_output_counts_equal_vllms_in_the_same_run(engine: str, tiny_model: Path,
                                                           tmp_path: Path) -> None:
    """A program with vLLM's stats off is recorded without them: kvscope counts the engine core's
    outputs itself (``lean_stats``). Here vLLM's stats are on too (the workload's independent
    logger) and kvscope is asked to count anyway: every step and every finished request it stored
    must equal what vLLM's own IterationStats said, in the same run."""
    session, counts_path = tmp_path / "lean.kvscope", tmp_path / "counts.json"
    args = [str(WORKLOAD), str(tiny_model), "--engine", engine, "--counts", str(counts_path),
            *PRESSURE]
    env = engine_env(KVSCOPE_COUNT_OUTPUTS="1")
    with engine_lock():
        if engine == "async":
            proc = subprocess.run([sys.executable, *args, "--api-session", str(session)],
                                  capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        else:
            proc = kvscope("record", "--session", str(session), "--", sys.executable, *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(counts_path.read_text())
    _assert_matches_counts(_report(session), counts)
    assert len(counts["requests"]) == 64
    match = own_counts_match(session, counts)
    assert match is True, match
