"""Data parallelism (issue 16) and KV-cache groups of models the CPU engine cannot run (issue 14),
recorded on vLLM 0.26.0 on H200s (2026-11-30, bench/gpu/README.md): each session against what the
same run counted independently. CI has no GPU; the data is real.

- ``gpu_h200x2_dp2_moe`` (and the dense run's comparison): ``bench/gpu_dp2.py`` on two H200s, an OpenAI server with
  ``--data-parallel-size 2`` under ``kvscope record``: the tiny Mixtral (a MoE model: vLLM runs
  its ranks as ``DPEngineCoreProc``) and Llama-3-8B shapes (dummy weights, ``EngineCoreProc``).
  ``bench/results/gpu_h200x2_dp2_*.json`` holds the server's per-engine ``/metrics`` counter
  deltas of the same run, and what the kill -9 of rank 1's worker produced.
- ``gpu_h200_groups_granite``: GraniteMoeHybrid (Granite-4.0-H-Micro shapes, 8 layers: Mamba-2 at
  0-2 and 4-6, attention at 3 and 7), ``gpu_h200_groups_mla``: DeepSeek-V2-Lite shapes (4 layers,
  MLA), both ``tests/support/workload.py`` under ``kvscope record`` with its StatLoggerBase
  (``bench/results/gpu_h200_groups_*_counts.json``) and every step's group blocks.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from profiler.analysis.report import build_report
from profiler.session.reader import open_session
from tests.support import checks, dp

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ROOT / "sessions"
RESULTS = ROOT / "bench" / "results"
DP_BLOCKS = 2000
"""``--num-gpu-blocks-override`` of each rank (bench/gpu_dp2.py)."""


@cache
def _report(name: str) -> dict[str, Any]:
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        return build_report(s)


def _json(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def test_dp2_per_rank_numbers_equal_the_servers_per_engine_counters() -> None:
    session = SESSIONS / "gpu_h200x2_dp2_moe.kvscope"
    run = _json("gpu_h200x2_dp2_moe")
    server = {int(e): {k: int(v) for k, v in c.items()} for e, c in run["server"].items()}
    assert dp.per_engine_sums(session) == server
    assert sorted(server) == [0, 1] and all(c["finished"] == 16 for c in server.values())
    with open_session(session) as s:
        engines = s.table("engines")
        requests = s.table("requests")
        blocks = s.table("prompt_blocks")
        cores = s.table("processes").query("role == 'engine_core'")
        kv = s.table("events").query("kind == 'kv_cache_config'")
        groups = s.table("kv_cache_groups")
    assert sorted(engines["engine_index"]) == [0, 1]
    assert set(engines["data_parallel_size"]) == {2}
    for rank, eid in zip(engines["engine_index"], engines["engine_id"], strict=True):
        mine = requests[requests["engine_id"] == eid]
        assert len(mine) == server[int(rank)]["finished"]
        hashed = {r.rsplit("-", 1)[0] for r in blocks.loc[blocks["engine_id"] == eid, "request_id"]}
        # each rank hashed the prompts of its own requests; at the comparison (before the kill)
        # exactly those, then also the kill phase's requests, which never finished
        assert set(mine["request_id"]) <= hashed and len(hashed) - len(mine) <= 2
        assert run["per_rank"][str(rank)]["hashed_ids"] == run["per_rank"][str(rank)]["requests"] == 16
    assert sorted(int(r) for r in cores["rank"]) == [0, 1] and cores["pid"].nunique() == 2
    # each rank's engine core allocated its own KV cache of DP_BLOCKS blocks: its engine row and
    # its group row say so (vLLM's frontend only has the sum, 4,000)
    assert sorted(kv["pid"]) == sorted(cores["pid"])
    assert all(json.loads(d)["num_blocks"] == DP_BLOCKS for d in kv["details_json"])
    assert list(engines["num_gpu_blocks"]) == [DP_BLOCKS, DP_BLOCKS]
    assert sorted(zip(groups["engine_id"], groups["num_blocks"], strict=True)) == [
        (int(e), DP_BLOCKS) for e in sorted(engines["engine_id"])]


def test_dp2_dense_run_compared_equal() -> None:
    """The dense run (Llama-3-8B shapes, EngineCoreProc ranks): its session was recorded before
    the per-rank block fix and is not bundled; bench/gpu_dp2.py's own comparison of that run."""
    run = _json("gpu_h200x2_dp2_dense")
    assert run["ok"] is True and run["recorded"] == {e: {k: int(v) for k, v in c.items()}
                                                     for e, c in run["server"].items()}
    assert run["busy_loop_where"] == ["engine core: busy loop"]
    assert run["engine_core_ranks"] == [0, 1] and run["data_parallel_size"] == [2]


def test_dp2_kill_of_rank_1_is_that_ranks_busy_loop_failure() -> None:
    """MoE ranks run vLLM's DP busy loop (DPEngineCoreProc), which the CPU engine cannot run."""
    kill = _json("gpu_h200x2_dp2_moe")["kill"]
    session = SESSIONS / "gpu_h200x2_dp2_moe.kvscope"
    with open_session(session) as s:
        ev = s.table("events").query("kind == 'error'")
        cores = s.table("processes").query("role == 'engine_core'")
    rank1 = int(cores.loc[cores["rank"] == 1, "pid"].iloc[0])
    assert rank1 == kill["engine_core_pid"] and kill["killed_workers"]
    where = [json.loads(d).get("where") for p, d in zip(ev["pid"], ev["details_json"], strict=True)
             if p == rank1]
    assert where == ["engine core: busy loop (DPEngineCoreProc)"]
    assert any("EngineDeadError" in m for m in ev["message"])


def test_dp2_report_sums_both_ranks() -> None:
    rep = _report("gpu_h200x2_dp2_moe")
    server = _json("gpu_h200x2_dp2_moe")["server"]
    assert rep["engine"]["data_parallel_size"] == 2
    assert rep["requests_finished"] == sum(c["finished"] for c in server.values()) == 32
    assert rep["cost"]["generation_tokens"] == sum(c["generation_tokens"] for c in server.values())


GRANITE = {"attention_layers": (3, 7), "kv_heads": 4, "head_dim": 2048 // 16, "max_model_len": 16384}
"""bench/gpu_configs.py's granite_hybrid() and the run's --max-model-len."""


def test_hybrid_mamba_groups_equal_vllms_own_numbers() -> None:
    session = SESSIONS / "gpu_h200_groups_granite.kvscope"
    counts = _json("gpu_h200_groups_granite_counts")
    rep = _report("gpu_h200_groups_granite")
    groups = rep["kv_cache"]["groups"]
    assert [(g["kind"], g["layers"]) for g in groups] == [("mamba", 2)] * 3 + [("full_attention", 2)]
    attn = groups[3]
    # vLLM raised the attention block size so that an attention page holds a Mamba state:
    # 528 tokens (the independent logger read it from vLLM's cache_config)
    assert attn["block_size"] == counts["block_size"] == rep["engine"]["block_size"] == 528
    assert attn["page_size_bytes"] == 528 * 2 * GRANITE["kv_heads"] * GRANITE["head_dim"] * 2  # K+V, bf16
    assert {g["page_size_bytes"] for g in groups} == {attn["page_size_bytes"]}  # one page size
    # without prefix caching a Mamba group's block spans the whole sequence (max_model_len)
    assert all(g["block_size"] == GRANITE["max_model_len"] for g in groups[:3])
    assert {g["num_blocks"] for g in groups} == {counts["num_gpu_blocks"]}
    # every step's group blocks (KVSCOPE_KV_GROUP_INTERVAL_MS=0) add up to vLLM's own usage: the
    # stats object's beside each sample, and the independent logger's step by step. The engine
    # core also made stats for 2 steps before the logger's first (no output yet: vLLM sent none)
    # and 2 idle ones after its last
    usable = counts["num_gpu_blocks"] - 1
    rows = checks.group_usage_per_step(session)
    assert all(abs(blocks / usable - u) < 1e-12 for _, blocks, u in rows)
    assert (len(rows), counts["steps"]) == (113, 109)
    assert [b / usable for _, b, _ in rows[2:111]] == pytest.approx(counts["kv_usage"], abs=1e-12)
    assert [b for _, b, _ in rows[111:]] == [0, 0]
    # 16 requests at once: one state block each per Mamba group, their tokens' blocks in attention
    fin = counts["finished_requests"]
    assert [g["peak_blocks_used"] for g in groups[:3]] == [len(fin)] * 3 == [16] * 3
    longest = max(f["prompt_tokens"] + f["generation_tokens"] for f in fin)
    assert attn["peak_blocks_used"] <= len(fin) * math.ceil(longest / 528)
    assert rep["kv_cache"]["peak_usage_frac"] == pytest.approx(max(counts["kv_usage"]), rel=1e-12)
    assert attn["peak_blocks_used"] == round(max(counts["kv_usage"]) * usable) - 3 * 16


def test_mla_group_equals_vllms_own_numbers() -> None:
    counts = _json("gpu_h200_groups_mla_counts")
    rep = _report("gpu_h200_groups_mla")
    (g,) = rep["kv_cache"]["groups"]
    assert (g["kind"], g["layers"]) == ("mla_attention", 4)
    assert g["block_size"] == counts["block_size"] == 16
    # MLA caches one latent vector per token and layer: kv_lora_rank 512 + rope dims 64, bf16
    assert g["page_size_bytes"] == 16 * (512 + 64) * 2
    assert g["num_blocks"] == counts["num_gpu_blocks"] == rep["engine"]["num_gpu_blocks"]
    assert rep["steps"] == counts["steps"] and rep["requests_finished"] == counts["finished"] == 64
    assert g["peak_usage_frac"] == pytest.approx(max(counts["kv_usage"]), rel=1e-12)
    assert rep["prefix_cache"]["hits_tokens"] == counts["prefix_hits"] > 0
