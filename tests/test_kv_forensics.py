"""Preemption forensics, token occupancy, in-process evictions and KV events from a real CPU engine.

One recorded run (``kvscope record --kv-events --kv-cache-metrics``) of 48 requests at once into
24 blocks: preemptions, prefix hits, evictions. An independent StatLoggerBase in the same program
counts what vLLM reported (``tests/support/scenarios.py``); the session must agree with it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from profiler.analysis import preemption, residency
from profiler.analysis.kv_events import kv_event_summary
from profiler.analysis.occupancy import engine_occupancy
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import kvscope

pytestmark = pytest.mark.engine

FORENSICS = sc.Scenario("forensics", blocks=24, requests=48, prefixes=2, prefix_len_tokens=600,
                        max_tokens=48, max_num_seqs=32)
"""48 requests at once into 24 blocks of 128 tokens, two shared 600-token prefixes."""
RECORD_ARGS = ("--kv-events", "--kv-cache-metrics")


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    rec = sc.recorded(FORENSICS, tiny_model, tmp_path_factory.mktemp("forensics"), RECORD_ARGS)
    assert rec.returncode == 0, rec.output_tail
    counts = json.loads(sc.counts_path(rec.path).read_text())
    assert counts["preemptions"] > 5 and counts["prefix_hits"] > 0  # real pressure, real reuse
    return rec.path, counts


def _report(path: Path) -> dict:
    out = kvscope("report", "--json", str(path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_preemption_is_recorded_with_what_it_discarded(run: tuple[Path, dict]) -> None:
    path, counts = run
    with open_session(path) as s:
        table = preemption.preemption_table(s)
        raw = s.table("preemptions")
    assert len(table) == counts["preemptions"]
    # per request: exactly the preemptions vLLM counted for it (FinishedRequestStats)
    per_request = table["request_key"].value_counts().to_dict()
    expected = {rid: n for rid, n in counts["request_preemptions"].items() if n}
    assert per_request == expected
    assert set(table["reason"]) == {"kv_cache_full"}  # schedule() found no free block
    assert (table["computed_tokens"] >= 0).all() and (table["computed_tokens"] > 0).any()
    assert (table["blocks_freed"] >= 0).all() and (table["blocks_freed"] > 0).any()
    assert (table["kv_usage_after_frac"] <= table["kv_usage_before_frac"] + 1e-9).all()
    # blocks freed and usage drop agree (usage counts blocks of num_gpu_blocks - 1)
    drop = (table["kv_usage_before_frac"] - table["kv_usage_after_frac"]) * (FORENSICS.blocks - 1)
    assert (drop.round().astype(int) == table["blocks_freed"]).all()
    # each resume row mirrors what vLLM added to its preempted-request prefix counters
    resumed = raw[raw["event"] == "resumed"]
    assert int(resumed["queries_tokens"].sum()) == counts["preempted_queries"]
    assert int(resumed["hits_tokens"].sum()) == counts["preempted_hits"]


def test_report_preemption_object_matches_vllm_and_the_overview_count(run: tuple[Path, dict]) -> None:
    path, counts = run
    rep = _report(path)
    p = rep["preemption"]
    assert set(p) == {"count", "requests", "recomputed_tokens", "recompute_s_est", "worst_request"}
    assert p["count"] == rep["preemptions"] == counts["preemptions"]
    assert p["requests"] == sum(1 for n in counts["request_preemptions"].values() if n)
    assert p["recomputed_tokens"] == counts["preempted_queries"] - counts["preempted_hits"]
    with open_session(path) as s:
        rate = preemption.prefill_rate(s)
    assert rate and p["recompute_s_est"] == pytest.approx(p["recomputed_tokens"] / rate)
    # the worst request: the most tokens prefilled again; its preemptions are vLLM's count for it
    with open_session(path) as s:
        table = preemption.preemption_table(s)
    per_request = table.groupby("request_key")["recomputed_tokens"].sum()
    worst = p["worst_request"]
    assert worst["recomputed_tokens"] == per_request.max()
    assert worst["preemptions"] == counts["request_preemptions"][worst["request_id"]]
    assert rep["notes"] == []


def test_token_occupancy_is_measured_on_vllms_own_block_count(run: tuple[Path, dict]) -> None:
    path, counts = run
    with open_session(path) as s:
        occ = engine_occupancy(s)
        steps = s.table("steps", "ORDER BY t_unix_s")
    assert occ is not None
    # one occupancy row per make_stats call, read right after it computed the kv_cache_usage the
    # frontend's independent logger saw: the blocks in use are vLLM's own. The engine core makes
    # one more at shutdown that no frontend receives.
    usage = occ.steps["used_blocks"].to_numpy() / (FORENSICS.blocks - 1)
    n = len(counts["kv_usage"])
    assert n == len(steps) and len(usage) - n in (0, 1)
    assert usage[:n] == pytest.approx(counts["kv_usage"], abs=1e-9)
    assert (occ.steps["held_tokens"] <= occ.steps["used_blocks"] * 128).all()
    assert (occ.steps["token_occupancy_frac"] <= occ.steps["block_usage_frac"] + 1e-9).all()
    rep = _report(path)
    kv = rep["kv_cache"]
    assert kv["token_occupancy_mean_frac"] == pytest.approx(occ.mean_frac)
    assert kv["token_occupancy_peak_frac"] == pytest.approx(occ.peak_frac)
    assert 0 < kv["token_occupancy_mean_frac"] < kv["mean_usage_frac"]  # partial tail blocks


def test_evictions_and_kv_events_recorded_in_process(run: tuple[Path, dict]) -> None:
    path, counts = run
    with open_session(path) as s:
        ev = s.table("kv_evictions")
        kv = s.table("kv_events")
        summary = kv_event_summary(s)
        check = {r["quantity"]: r for r in residency.residency_check(s)}
    assert counts["eviction_events"] > 0
    assert len(ev) == counts["eviction_events"]
    assert ev["lifetime_s"].sum() == pytest.approx(counts["eviction_lifetime_sum_s"])
    assert set(kv["source"]) == {"inproc"} and kv["engine_id"].notna().all()
    # vLLM (sampling 1.0) reports every reuse of an allocated block, cached or not; each cached
    # block evicted (a BlockRemoved) is one of them
    assert summary.stored_blocks > 0 and summary.restored_blocks > 0
    assert 0 < summary.evicted_blocks <= counts["eviction_events"]
    assert check["evictions"]["vllm"] == counts["eviction_events"]
    assert check["evictions"]["kvscope"] == summary.evicted_blocks
    life_v, life_m = check["lifetime mean (s)"]["vllm"], check["lifetime mean (s)"]["kvscope"]
    assert life_v is not None and life_m is not None
    assert math.isfinite(life_v) and life_v > 0 and math.isfinite(life_m) and life_m > 0


def test_preemption_table_orders_each_requests_preemptions(run: tuple[Path, dict]) -> None:
    path, _ = run
    with open_session(path) as s:
        table = preemption.preemption_table(s)
    for _, g in table.groupby("request_key"):
        assert list(g.sort_values("t_unix_s")["nth"]) == list(range(1, len(g) + 1))
    resumed = table.dropna(subset=["resumed_unix_s"])
    assert len(resumed) and (resumed["resumed_unix_s"] >= resumed["t_unix_s"]).all()
    assert pd.to_numeric(table["recomputed_tokens"]).notna().sum() == len(resumed)
