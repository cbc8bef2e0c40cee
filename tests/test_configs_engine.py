"""Issue 14 on a real vLLM CPU engine: a sliding-window model (two KV-cache groups) serving with
n-gram speculative decoding, recorded by ``kvscope record`` beside an independent StatLoggerBase
in the same run (``workload.py --counts``).

The tiny Gemma-2 (``tests/support/tinymodel.build_tiny_gemma2``) has a sliding-window layer
(window 256 tokens) and a full-attention layer: vLLM gives it two KV-cache groups drawing on one
pool. Group blocks are sampled every step here (``KVSCOPE_KV_GROUP_INTERVAL_MS=0``) so that each
step's groups can be added up and compared with vLLM's own usage of that step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from profiler.analysis.diagnosis import diagnose
from profiler.session.reader import open_session
from tests.support import checks
from tests.support.engine import WORKLOAD, engine_env, engine_lock, kvscope
from tests.support.tinymodel import SLIDING_WINDOW_TOKENS, build_tiny_gemma2

pytestmark = pytest.mark.engine

BLOCKS = 40
WORK = ["--blocks", str(BLOCKS), "--max-model-len", "1024", "--requests", "32", "--prefixes", "2",
        "--prefix-len", "600", "--max-tokens", "48", "--spec-ngram", "3"]
"""32 requests at once of ~650 tokens: 6 full-attention + 3 sliding-window blocks each, 40 blocks."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    d = tmp_path_factory.mktemp("gemma2-ngram")
    model = build_tiny_gemma2(d / "model")
    session, counts = d / "run.kvscope", d / "counts.json"
    with engine_lock():
        proc = kvscope("record", "--session", str(session), "--", sys.executable, str(WORKLOAD),
                       str(model), "--engine", "llmengine", "--counts", str(counts), *WORK,
                       env=engine_env(KVSCOPE_KV_GROUP_INTERVAL_MS="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = kvscope("report", "--json", str(session))
    assert out.returncode == 0, out.stderr
    return session, json.loads(out.stdout), json.loads(counts.read_text())


def test_spec_decode_equals_vllms_own_stats(run: tuple[Path, dict, dict]) -> None:
    session, rep, counts = run
    assert rep["steps"] == counts["steps"]
    result = checks.spec_decode_matches(rep, counts)
    assert all(v is True for v in result.values()), result
    sd = rep["spec_decode"]
    assert sd["method"] == "ngram" and len(sd["accepted_per_position"]) == 3
    assert 0 < sd["acceptance_rate"] <= 1
    assert rep["memory"]["drafter_weights_bytes"] == 0  # the n-gram proposer has no weights
    with open_session(session) as s:
        n_steps = s.scalar("SELECT COUNT(*) FROM spec_decode_steps")
    assert n_steps == counts["spec_steps"] > 0


def test_two_kv_cache_groups_recorded_and_their_blocks_add_up_to_vllms_usage(
        run: tuple[Path, dict, dict]) -> None:
    session, rep, counts = run
    groups = rep["kv_cache"]["groups"]
    assert [(g["kind"], g["layers"], g["block_size"], g["sliding_window_tokens"]) for g in groups] == [
        ("sliding_window", 1, counts["block_size"], SLIDING_WINDOW_TOKENS),
        ("full_attention", 1, counts["block_size"], None)]
    assert all(g["num_blocks"] == counts["num_gpu_blocks"] == BLOCKS for g in groups)
    with open_session(session) as s:
        names = [json.loads(n) for (n,) in s.rows("SELECT layer_names FROM kv_cache_groups ORDER BY group_index")]
    assert names == [["model.layers.0.self_attn.attn"], ["model.layers.1.self_attn.attn"]]
    match = checks.group_blocks_match_usage(session, counts, BLOCKS)
    assert match is True, match
    sliding, full = groups
    assert sliding["peak_blocks_used"] < full["peak_blocks_used"]  # the window frees blocks
    held = [blocks for _, blocks, _ in checks.group_usage_per_step(session)]
    assert max(held) / (BLOCKS - 1) == pytest.approx(rep["kv_cache"]["peak_usage_frac"])


def test_latency_splits_equal_vllms_per_request_times(run: tuple[Path, dict, dict]) -> None:
    _, rep, counts = run
    fin = counts["finished_requests"]
    assert len(fin) == rep["requests_finished"] == 32
    prefill = np.array([f["prefill_s"] for f in fin])
    per_token = np.array([f["decode_s"] / (f["generation_tokens"] - 1) for f in fin])
    lat = rep["latency_s"]
    for q in (50, 95, 99):
        assert lat[f"prefill_p{q}"] == pytest.approx(np.percentile(prefill, q), rel=1e-9)
        assert lat[f"decode_per_token_p{q}"] == pytest.approx(np.percentile(per_token, q), rel=1e-9)
    assert rep["cost"]["gpu_seconds"] is None and rep["cost"]["gpus"] == 0  # a CPU engine
    assert rep["cost"]["generation_tokens"] == counts["generation_tokens"]
    assert rep["cost"]["prompt_tokens"] == counts["prompt_tokens"]


def test_diagnosis_sizes_the_pool_per_group(run: tuple[Path, dict, dict]) -> None:
    session, rep, counts = run
    assert counts["preemptions"] > 0  # 32 requests of 9 blocks each in 40 blocks
    with open_session(session) as s:
        found = {f.code: f for f in diagnose(s)}
    sized = [f for code, f in found.items() if code in ("KV_SATURATION", "PREEMPTION_STORM")]
    assert sized, sorted(found)
    for f in sized:
        groups = f.metrics["groups"]
        assert [g["kind"] for g in groups] == ["sliding_window", "full_attention"]
        sliding, full = groups
        window_blocks = -(-(SLIDING_WINDOW_TOKENS - 1) // counts["block_size"]) + 1
        assert sliding["blocks_per_seq"] <= window_blocks < full["blocks_per_seq"] + full["shared_blocks"]
        assert "KV-cache groups share the pool" in f.recommendation
        if "demand_blocks" in f.metrics:
            assert f.metrics["demand_blocks"] == sum(g["demand_blocks"] for g in groups)
