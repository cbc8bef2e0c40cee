"""Way in #3: an OpenAI-compatible vLLM server started with KVSCOPE_SESSION set, nothing else.

The session must agree with the server's own Prometheus counters over the same run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.engine import ROOT, engine_env, engine_lock, kvscope
from tests.support.ports import free_port
from tests.support.waiting import wait_until
from tests.support.workload import prompts

pytestmark = pytest.mark.engine


def _counters(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_total"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited during start-up"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError("server did not become healthy")


def test_serve_with_env_var_matches_server_counters(tiny_model: Path, tmp_path: Path) -> None:
    session = tmp_path / "serve.kvscope"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
           "--host", "127.0.0.1", "--port", str(port), "--num-gpu-blocks-override", "24",
           "--max-model-len", "2048", "--enable-prefix-caching", "--max-num-seqs", "32"]
    with engine_lock():
        proc = subprocess.Popen(cmd, env=engine_env(KVSCOPE_SESSION=str(session)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_healthy(base, proc)
            before = _counters(base)
            texts = prompts(48, 2, 600)

            def one(text: str) -> None:
                r = httpx.post(f"{base}/v1/completions", timeout=300, json={
                    "model": str(tiny_model), "prompt": text, "max_tokens": 48,
                    "ignore_eos": True, "temperature": 0.0})
                r.raise_for_status()

            with ThreadPoolExecutor(48) as pool:
                list(pool.map(one, texts))

            def counted() -> dict[str, float] | None:
                """The server's counters once the last step's stats reached the frontend."""
                now = _counters(base)
                done = now.get("vllm:request_success_total", 0.0) - before.get("vllm:request_success_total", 0.0)
                out = (now.get("vllm:generation_tokens_total", 0.0)
                       - before.get("vllm:generation_tokens_total", 0.0))
                return now if (done, out) == (48, 48 * 48) else None

            after = wait_until(counted, 60, "the server to count all 48 requests and their tokens",
                               interval_s=0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    rep = json.loads(kvscope("report", "--json", str(session)).stdout)
    assert delta["vllm:num_preemptions_total"] > 0 and delta["vllm:prefix_cache_hits_total"] > 0
    assert rep["preemptions"] == delta["vllm:num_preemptions_total"]
    assert rep["prefix_cache"]["queries_tokens"] == delta["vllm:prefix_cache_queries_total"]
    assert rep["prefix_cache"]["hits_tokens"] == delta["vllm:prefix_cache_hits_total"]
    assert rep["requests_finished"] == 48
    assert rep["engine"]["num_gpu_blocks"] == 24
    assert rep["session"]["complete"] is True  # SIGTERM is a clean stop
