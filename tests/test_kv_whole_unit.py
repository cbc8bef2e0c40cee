"""Cheap checks of the whole-KV-cache analysis on written sessions and bad inputs (unit tier).

What vLLM really produces is checked in the engine tier (test_kv_forensics, test_kv_tiers_vllm,
test_disk_tier, test_prefix_below_block, test_attach_residency); here: pairing and estimates on
hand-written rows, and that damaged or odd inputs never raise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from profiler.analysis import preemption, residency
from profiler.analysis.diagnosis.tokens import shared_prefix_tokens
from profiler.analysis.whatif import AccessTrace, RequestAccess
from profiler.recorder.tiers import flatten_connector_stats, tier_rows
from profiler.session.reader import open_session
from profiler.session.rows import EngineRow, PreemptionRow, RequestRow, StepRow
from profiler.session.writer import SessionWriter
from tests.support.engine import ROOT

SESSIONS = ROOT / "sessions"


def _engine(prefix: int) -> EngineRow:
    return EngineRow(1, 1, 0, None, "inproc", 1.0, "0.32.0", "m", 128, 24, 0.9, prefix, 8, 2048,
                     2048, 1, 1, 1, "auto", "cpu")


def _preempted(t: float, rid: str, computed: int, prompt: int, output: int) -> PreemptionRow:
    return PreemptionRow(1, t, rid, "preempted", "kv_cache_full", computed, prompt, output, 3,
                         0.9, 0.8, None, None)


def _resumed(t: float, rid: str, q: int, h: int) -> PreemptionRow:
    return PreemptionRow(1, t, rid, "resumed", None, None, 500, 10, None, None, None, q, h)


def _write(path: Path, prefix: int, rows: list[PreemptionRow], step_preemptions: int) -> Path:
    w = SessionWriter(path)
    w.append("engines", _engine(prefix))
    w.append("steps", StepRow(1, 100.0, 2, 1, 0.9, 0, 0, 0, 0, step_preemptions, 0, 0, 0, 0))
    # two requests prefilled one after the other: 1000 computed prompt tokens in 0.5 s
    for i, (t_end, prefill) in enumerate(((100.5, 0.25), (101.0, 0.25))):
        w.append("requests", RequestRow(1, f"r{i}", t_end, 0.0, prefill, 0.1, 0.3, 0.35, 0.3,
                                        600, 10, 100, 0, "length"))
    for r in rows:
        w.append("preemptions", r)
    w.close()
    return path


def test_preemptions_pair_with_their_last_resume(tmp_path: Path) -> None:
    rows = [_preempted(100.1, "a-0123abcd", 256, 500, 5), _resumed(100.2, "a-0123abcd", 505, 128),
            _resumed(100.3, "a-0123abcd", 505, 256),  # 0.2x also counts a retried lookup
            _preempted(100.4, "a-0123abcd", 300, 500, 8), _resumed(100.5, "a-0123abcd", 508, 0),
            _preempted(100.6, "b", 100, 90, 10)]  # never resumed
    path = _write(tmp_path / "s.kvscope", 1, rows, step_preemptions=3)
    with open_session(path) as s:
        t = preemption.preemption_table(s)
        summary = preemption.summarize(s, 3)
        rate = preemption.prefill_rate(s)
    assert rate == pytest.approx(1000 / 0.5)
    assert list(t["request_key"]) == ["a", "a", "b"] and list(t["nth"]) == [1, 2, 1]
    assert list(t["recomputed_tokens"].iloc[:2]) == [505 - 256, 508]
    assert np.isnan(t["recomputed_tokens"].iloc[2])  # prefix caching on, never resumed: unknown
    assert summary.as_json() == {
        "count": 3, "requests": 2, "recomputed_tokens": 249 + 508,
        "recompute_s_est": pytest.approx((249 + 508) / rate),
        "worst_request": {"request_id": "a", "preemptions": 2, "recomputed_tokens": 757,
                          "recompute_s_est": pytest.approx(757 / rate)}}
    assert summary.notes == ()


def test_without_prefix_caching_the_whole_sequence_is_recomputed(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.kvscope", 0, [_preempted(100.1, "a", 256, 500, 5)], 2)
    with open_session(path) as s:
        t = preemption.preemption_table(s)
        summary = preemption.summarize(s, 2)
    assert t["recomputed_tokens"].iloc[0] == 505 and bool(t["recompute_estimated"].iloc[0])
    assert summary.count == 2  # the step counters' count, shown on every page
    assert summary.notes and "engine core recorded 1 preemptions" in summary.notes[0]


@pytest.mark.parametrize("name", ["kv_saturation", "healthy", "gpu_h200_kv_pressure"])
def test_sessions_without_engine_core_rows_keep_vllms_counts(name: str) -> None:
    with open_session(SESSIONS / f"{name}.kvscope") as s:
        steps = s.scalar("SELECT SUM(preemptions) FROM steps")
        q, h = s.rows("SELECT SUM(preempted_prefix_queries_tokens), "
                      "SUM(preempted_prefix_hits_tokens) FROM steps")[0]
        summary = preemption.summarize(s, steps)
    assert summary.count == steps and summary.table.empty
    assert summary.recomputed_tokens == (q - (h or 0) if q is not None else None)


@pytest.mark.parametrize("stats", [
    None, 3, "x", [], {}, {"data": 5}, {"types": [], "data": {"a": {(): "no"}}},
    {"data": {"vllm:kv_offload_store_bytes": {(): float("nan")}}},
    {"GPU_to_CPU": [{"op_size": "big"}, 7, {"op_size": 1e6, "op_time": 0.01}]},
    {"nested": {"deep": {"x": [1, 2, None, "y"]}}},
])
def test_connector_stats_of_any_shape_never_raise(stats: object) -> None:
    flat = flatten_connector_stats(stats)
    assert all(isinstance(v, float) and np.isfinite(v) for v in flat.values())


def test_legacy_transfer_lists_become_bytes_and_seconds() -> None:
    class S:
        connector_prefix_cache_stats = None
        kv_connector_stats = {"GPU_to_CPU": [{"op_size": 1e6, "op_time": 0.01},
                                             {"op_size": 3e6, "op_time": 0.02}],
                              "CPU_to_GPU": [{"op_size": 2e6, "op_time": 0.004}]}

    (row,) = tier_rows(S(), 1, 0.0, "CPU")
    assert (row.stored_bytes, row.loaded_bytes) == (4_000_000, 2_000_000)
    assert row.store_s == pytest.approx(0.03) and row.load_s == pytest.approx(0.004)
    assert json.loads(row.details_json)["GPU_to_CPU.op_size"] == 4e6


def test_histogram_median_interpolates_inside_its_bucket() -> None:
    d = residency._from_histogram({"0.1": 0.0, "1.0": 4.0, "10.0": 8.0, "+Inf": 8.0,
                                   "count": 8.0, "sum": 20.0})
    assert d is not None and d.count == 8 and d.mean_s == 2.5
    assert d.p50_s == pytest.approx(1.0)
    assert residency._from_histogram({"count": 0.0, "sum": 0.0}) is None


def test_shared_prefix_is_measured_in_whole_chunks() -> None:
    a = np.array([1, 2, 3], dtype=np.int64)
    b = np.array([1, 2, 9], dtype=np.int64)  # shares two chunks with a
    c = np.array([7], dtype=np.int64)
    trace = AccessTrace(1, 16, [RequestAccess(0.0, a, 50, 0), RequestAccess(1.0, b, 50, 0),
                                RequestAccess(2.0, c, 20, 0)])
    assert list(shared_prefix_tokens(trace)) == [0, 32, 0]


def test_bundled_sessions_read_the_new_keys_as_not_measured() -> None:
    from profiler.analysis.report import build_report

    with open_session(SESSIONS / "prefix_thrash.kvscope") as s:
        rep = build_report(s)
    assert rep["kv_cache"]["token_occupancy_mean_frac"] is None
    assert [t["medium"] for t in rep["kv_tiers"]] == ["GPU"]
    assert rep["kv_tiers"][0]["hits_tokens"] == rep["prefix_cache"]["hits_tokens"]
    assert rep["kv_tiers"][0]["stored_bytes"] is None
    assert rep["preemption"]["count"] == rep["preemptions"] == 0


def _tier_session(path: Path, tier: list[tuple], capacity_bytes: int | None = None,
                  cycle: int = 0) -> Path:
    """A written session with one engine (24 blocks of 128, 1 MiB of KV per block), finished
    requests prefilled at 1,000 tokens/s, ``tier_samples`` rows (medium, queries, hits, stored,
    store_s, loaded, load_s) and, with ``cycle``, requests cycling through ``cycle`` distinct
    4-block prompts (a what-if trace)."""
    from profiler.session.rows import EventRow, PromptBlocksRow, TierSampleRow

    w = SessionWriter(path)
    w.append("engines", _engine(1))
    w.append("events", EventRow(99.0, 1, 1, "kv_cache_config", "", json.dumps(
        {"num_blocks": 24, "bytes_per_block": 2**20})))
    if capacity_bytes:
        w.append("events", EventRow(99.0, 1, 1, "kv_connector", "", json.dumps(
            {"medium": "CPU", "capacity_bytes": capacity_bytes})))
    n = max(cycle * 6, 2)
    for i in range(n):
        t = 100.0 + i
        w.append("steps", StepRow(1, t, 1, 0, 0.5, 513, 0, 0, 0, 0, 513, 10, 1, 0))
        w.append("requests", RequestRow(1, f"r{i}", t + 0.9, 0.0, 0.513, 0.1, 0.6, 0.9, 0.5,
                                        513, 10, 0, 0, "length"))
        if cycle:
            p = i % cycle
            hashes = np.array([p * 10 + k for k in range(4)], dtype="<i8").tobytes()
            w.append("prompt_blocks", PromptBlocksRow(1, t, f"r{i}", hashes))
    for k, (medium, q, h, stored, store_s, loaded, load_s) in enumerate(tier):
        w.append("tier_samples", TierSampleRow(1, 100.0 + k, medium, q, h, stored, store_s, loaded,
                                               load_s, 0.5, None, None, None, 0, None))
    w.close()
    return path


def _codes(path: Path) -> dict[str, dict]:
    from profiler.analysis.diagnosis import diagnose

    with open_session(path) as s:
        return {f.code: f.as_dict() for f in diagnose(s)}


def test_a_tier_that_only_stores_is_write_only(tmp_path: Path) -> None:
    path = _tier_session(tmp_path / "w.kvscope", [("CPU", 4000, 0, 300 * 2**20, 0.1, 0, 0.0)])
    f = _codes(path)["TIER_WRITE_ONLY"]
    assert f["metrics"] == {"medium": "CPU", "stored_bytes": 300 * 2**20, "loaded_bytes": 0,
                            "hits_tokens": 0, "queries_tokens": 4000}
    read_back = _tier_session(tmp_path / "r.kvscope",
                              [("CPU", 4000, 2000, 300 * 2**20, 0.1, 100 * 2**20, 0.05)])
    assert "TIER_WRITE_ONLY" not in _codes(read_back)


def test_loads_slower_than_prefill_are_named_with_both_rates(tmp_path: Path) -> None:
    # 1 MiB per 128-token block = 8 KiB per token; prefill 1,000 tokens/s (requests above)
    slow = _tier_session(tmp_path / "s.kvscope",
                         [("CPU", 4000, 2000, 300 * 2**20, 0.1, 4 * 2**20, 1.0)])  # 4 MiB/s
    f = _codes(slow)["TIER_SLOW_LOAD"]
    assert f["metrics"]["load_tokens_per_s"] == pytest.approx(4 * 2**20 / 8192)  # 512 tokens/s
    assert f["metrics"]["prefill_tokens_per_s"] == pytest.approx(1000.0)
    fast = _tier_session(tmp_path / "f.kvscope",
                         [("CPU", 4000, 2000, 300 * 2**20, 0.1, 40 * 2**20, 1.0)])
    assert "TIER_SLOW_LOAD" not in _codes(fast)


def test_a_tier_too_small_for_the_recurring_prefixes_gets_a_size(tmp_path: Path) -> None:
    # 12 prompts of 4 blocks cycle: 48 distinct blocks recur; GPU 24 blocks, tier 8 MiB = 8 blocks
    tier = [("CPU", 2000, 0, 80 * 2**20, 0.1, 0, 0.0)]
    small = _tier_session(tmp_path / "t.kvscope", tier, capacity_bytes=8 * 2**20, cycle=12)
    f = _codes(small)["TIER_TOO_SMALL"]
    assert f["metrics"]["tier_blocks"] == 8 and f["metrics"]["gpu_blocks"] == 24
    need = f["metrics"]["needed_blocks"]
    assert need > 24 and f["settings"]["kv_offloading_size"] >= (need - 1) / 1024
    big = _tier_session(tmp_path / "b.kvscope", tier, capacity_bytes=200 * 2**20, cycle=12)
    assert "TIER_TOO_SMALL" not in _codes(big)
