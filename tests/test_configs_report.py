"""Issue 14's report keys on small written sessions: latency splits and prompt-length buckets,
throughput, GPU cost, speculative decoding and KV-cache groups (unit tier: no engine).

The real-engine checks of the same keys against vLLM's own counts are in
``tests/test_configs_engine.py``; here each expected number is computed from the rows written,
by a formula independent of the code under test (numpy over the raw values).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from profiler.analysis.diagnosis.kv_groups import group_demands
from profiler.analysis.kv_groups import KvGroup
from profiler.analysis.report import build_report, format_text
from profiler.analysis.spec_decode import mean_accepted_length, spec_swing
from profiler.session.reader import open_session
from profiler.session.rows import (
    EngineRow,
    GpuProcessSampleRow,
    KvCacheGroupRow,
    KvGroupUsageRow,
    ProcessRow,
    RequestRow,
    SpecDecodeStepRow,
    StepRow,
)
from profiler.session.writer import SessionWriter
from tests.support.engine import ROOT, kvscope_here

T0 = 1_800_000_000.0


def _engine(device: str = "cpu", source: str = "inproc") -> EngineRow:
    return EngineRow(engine_id=1, pid=10, engine_index=0, label=None, source=source,
                     created_unix_s=T0, vllm_version="0.32.0", model="m", block_size=16,
                     num_gpu_blocks=101, gpu_memory_utilization=0.9, enable_prefix_caching=1,
                     max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=4096,
                     tensor_parallel_size=1, pipeline_parallel_size=1, data_parallel_size=1,
                     kv_cache_dtype="auto", device=device)


REQS = [  # (prompt_tokens, generation_tokens, prefill_s, decode_s, ttft_s, e2e_s)
    (100, 11, 0.010, 0.50, 0.05, 0.60), (120, 21, 0.012, 0.80, 0.06, 0.90),
    (900, 11, 0.090, 0.70, 0.30, 1.10), (1000, 31, 0.100, 1.50, 0.35, 2.00),
    (1100, 1, 0.110, 0.00, 0.40, 0.45), (110, 5, 0.011, 0.20, 0.04, 0.30),
]


def _write(path: Path, device: str = "cpu", spec: bool = True, groups: bool = True,
           gpu: bool = False) -> Path:
    w = SessionWriter(path)
    w.set_meta(started_unix_s=T0, ended_unix_s=T0 + 30)
    w.execute_now(f"INSERT INTO engines VALUES ({', '.join('?' * 20)})", tuple(_engine(device)))
    for i in range(20):
        w.append("steps", StepRow(1, T0 + 1 + i * 0.1, 2, 0, 0.4, 0, 0, 0, 0, 0, 50, 7, 0, 0))
    for i, (p, g, pre, dec, ttft, e2e) in enumerate(REQS):
        w.append("requests", RequestRow(1, str(i), T0 + 3 + i, 0.0, pre, dec, pre + dec, e2e, ttft,
                                        p, g, 0, 0, "length"))
    if spec:
        w.event("spec_decode_config", "spec", 1, method="ngram", num_speculative_tokens=3)
        w.event("drafter_loaded", "drafter", drafter="NgramProposer", drafter_weights_bytes=0)
        for drafts, tokens, accepted, per_pos in ((4, 12, 7, [4, 2, 1]), (2, 6, 5, [2, 2, 1]),
                                                  (3, 9, 0, [0, 0, 0])):
            w.append("spec_decode_steps", SpecDecodeStepRow(1, T0 + 2, drafts, tokens, accepted,
                                                            json.dumps(per_pos)))
    if groups:
        for i, (kind, window) in enumerate((("sliding_window", 64), ("full_attention", None))):
            w.append("kv_cache_groups", KvCacheGroupRow(1, T0 + 1, i, kind, 1, json.dumps([f"l{i}"]),
                                                        16, window, 2048, 101, 0))
        for t, blocks in ((1, (3, 10)), (2, (5, 40)), (3, (4, 20))):
            for i, n in enumerate(blocks):
                w.append("kv_group_usage", KvGroupUsageRow(1, T0 + t, i, n, 0.1))
    if gpu:
        w.append("processes", ProcessRow(pid=10, role="worker", rank=0, engine_id=1, host="h",
                                         started_unix_s=T0))
        for t in (0.0, 5.0, 20.0):  # the engine's worker holds GPU 0 from T0 to T0 + 20
            w.append("gpu_process_samples", GpuProcessSampleRow(T0 + t, 0, 10, 2**30))
            w.append("gpu_process_samples", GpuProcessSampleRow(T0 + t, 1, 99, 2**30))  # foreign
    w.flush()
    w.close()
    return path


def _report(path: Path) -> dict:
    with open_session(path) as s:
        return build_report(s)


def test_latency_splits_and_prompt_buckets(tmp_path: Path) -> None:
    lat = _report(_write(tmp_path / "s.kvscope"))["latency_s"]
    r = np.array(REQS, dtype=float)
    per_token = np.array([d / (g - 1) for _, g, _, d, _, _ in REQS if g > 1])
    for q in (50, 95, 99):
        assert lat[f"prefill_p{q}"] == pytest.approx(np.percentile(r[:, 2], q))
        assert lat[f"decode_per_token_p{q}"] == pytest.approx(np.percentile(per_token, q))
        assert lat[f"ttft_p{q}"] == pytest.approx(np.percentile(r[:, 4], q))
    split = lat["by_prompt_length"]
    median = int(np.median(r[:, 0]))
    assert split["split_tokens"] == median
    long_sel = r[:, 0] >= median
    assert split["long"]["requests"] == int(long_sel.sum()) and split["short"]["requests"] == int((~long_sel).sum())
    assert split["long"]["ttft_p99"] == pytest.approx(np.percentile(r[long_sel, 4], 99))
    assert split["short"]["e2e_p50"] == pytest.approx(np.percentile(r[~long_sel, 5], 50))


def test_throughput_window_is_first_arrival_to_last_finish(tmp_path: Path) -> None:
    tp = _report(_write(tmp_path / "s.kvscope"))["throughput"]
    finished = np.array([T0 + 3 + i for i in range(len(REQS))])
    start = finished - np.array([x[5] for x in REQS])
    window = finished.max() - start.min()
    assert tp["window_s"] == pytest.approx(window)
    assert tp["output_tokens_per_s"] == pytest.approx(sum(x[1] for x in REQS) / window)


def test_cost_on_a_cpu_engine_is_not_measured_with_the_reason(tmp_path: Path) -> None:
    cost = _report(_write(tmp_path / "s.kvscope"))["cost"]
    assert cost["gpu_seconds"] is None and cost["gpu_hours_per_million_tokens"] is None
    assert cost["gpus"] == 0 and "CPU" in cost["basis"]
    assert cost["prompt_tokens"] == 20 * 50 and cost["generation_tokens"] == 20 * 7


def test_cost_counts_only_gpus_the_sessions_processes_held(tmp_path: Path) -> None:
    cost = _report(_write(tmp_path / "s.kvscope", device="cuda", gpu=True))["cost"]
    assert cost["gpus"] == 1 and cost["gpu_seconds"] == pytest.approx(20.0)
    tokens = 20 * 50 + 20 * 7
    assert cost["gpu_hours_per_million_tokens"] == pytest.approx(20.0 / 3600 / (tokens / 1e6))


def test_spec_decode_sums_the_steps(tmp_path: Path) -> None:
    rep = _report(_write(tmp_path / "s.kvscope"))
    sd = rep["spec_decode"]
    assert set(sd) == {"method", "drafts", "draft_tokens", "accepted_tokens", "acceptance_rate",
                       "accepted_per_position"}
    assert (sd["method"], sd["drafts"], sd["draft_tokens"], sd["accepted_tokens"]) == ("ngram", 9, 27, 12)
    assert sd["acceptance_rate"] == pytest.approx(12 / 27)
    assert sd["accepted_per_position"] == [6, 4, 2]
    assert mean_accepted_length(sd) == pytest.approx(1 + 12 / 9)
    assert rep["memory"]["drafter_weights_bytes"] == 0
    assert "spec dec  ngram: acceptance 44.4%" in format_text(rep)


def test_no_spec_decode_is_null_and_a_bad_per_position_list_is_a_note(tmp_path: Path) -> None:
    assert _report(_write(tmp_path / "plain.kvscope", spec=False))["spec_decode"] is None
    p = _write(tmp_path / "bad.kvscope")
    with sqlite3.connect(p) as c:
        c.execute("UPDATE spec_decode_steps SET accepted_per_pos = 'not json' WHERE drafts = 2")
    rep = _report(p)
    assert rep["spec_decode"]["accepted_per_position"] == [4, 2, 1]
    assert any("accepted_per_pos" in n for n in rep["notes"])


def test_kv_groups_in_the_report(tmp_path: Path) -> None:
    groups = _report(_write(tmp_path / "s.kvscope"))["kv_cache"]["groups"]
    assert [(g["index"], g["kind"], g["sliding_window_tokens"]) for g in groups] == [
        (0, "sliding_window", 64), (1, "full_attention", None)]
    assert [g["peak_blocks_used"] for g in groups] == [5, 40]
    assert groups[1]["mean_blocks_used"] == pytest.approx((10 + 40 + 20) / 3)
    assert groups[1]["peak_usage_frac"] == pytest.approx(40 / 100)


def test_group_demand_windows_the_sliding_group() -> None:
    import pandas as pd

    full = KvGroup(1, 1, "full_attention", 1, [], 16, None, 2048, 101, False, None, None)
    window = KvGroup(1, 0, "sliding_window", 1, [], 16, 64, 2048, 101, False, None, None)
    reqs = pd.DataFrame({"prompt_tokens": [1000] * 10, "generation_tokens": [33] * 10,
                         "cached_tokens": [512] * 10})
    g_win, g_full = group_demands([window, full], reqs, seqs=4, shared_blocks=32)
    tokens = 1000 + 33 - 1
    assert g_full.total_blocks_per_seq == math.ceil(tokens / 16)
    assert g_full.blocks_per_seq == math.ceil(tokens / 16) - 512 // 16 and g_full.shared_blocks == 32
    assert g_win.blocks_per_seq == math.ceil(63 / 16) + 1 and g_win.shared_blocks == 0
    assert g_win.blocks == 4 * g_win.blocks_per_seq


def test_spec_swing_rows() -> None:
    with_spec = {"spec_decode": {"drafts": 10, "accepted_tokens": 15, "acceptance_rate": 0.5},
                 "memory": {"drafter_weights_bytes": 100, "weights_bytes": 1100},
                 "engine": {"num_gpu_blocks": 90}, "kv_cache": {"peak_usage_frac": 0.5},
                 "gpus": [], "throughput": {"output_tokens_per_s": 200.0}, "latency_s": {}}
    without = {"spec_decode": None, "memory": {"drafter_weights_bytes": None, "weights_bytes": 1000},
               "engine": {"num_gpu_blocks": 100}, "kv_cache": {"peak_usage_frac": 0.4},
               "gpus": [], "throughput": {"output_tokens_per_s": 150.0}, "latency_s": {}}
    rows = {r["metric"]: r for r in spec_swing(with_spec, without)}
    assert rows["mean accepted length (tokens)"]["with"] == pytest.approx(2.5)
    assert rows["KV blocks"]["delta"] == -10 and rows["model weights (bytes)"]["delta"] == 100
    assert rows["drafter weights (bytes)"]["delta"] is None  # not measured without a drafter
    assert rows["generation throughput (tokens/s)"]["delta"] == pytest.approx(50.0)


@pytest.mark.parametrize("name", ["healthy", "gpu_h200_healthy"])
def test_bundled_sessions_without_the_new_tables_read_as_before(name: str) -> None:
    with open_session(ROOT / "sessions" / f"{name}.kvscope") as s:
        assert s.notes() == [] and not s.has_table("spec_decode_steps")
        rep = build_report(s)
    assert rep["spec_decode"] is None and rep["kv_cache"]["groups"] == []
    json.dumps(rep, allow_nan=False)


def test_bad_benchmark_files_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    detailed = {"duration": 1.0, "input_lens": [1], "output_lens": [1, 2], "ttfts": [0.1],
                "itls": [[]], "start_times": [0.0], "errors": [""]}
    cases = {"notjson.json": ("{", "not JSON"),
             "summary.json": (json.dumps({"duration": 1.0, "completed": 1}), "--save-detailed"),
             "ragged.json": (json.dumps(detailed), "one length"),
             "list.json": ("[1, 2]", "not a vLLM benchmark result")}
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        out = kvscope_here("import-bench", str(tmp_path / name), "--session", str(tmp_path / f"{name}.kvscope"))
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert why in out.stderr and not (tmp_path / f"{name}.kvscope").exists()


def test_import_bench_keeps_good_requests_beside_bad_values(tmp_path: Path) -> None:
    data = {"date": "20261130-120000", "backend": "openai", "duration": 2.0, "completed": 3,
            "failed": 1, "input_lens": [10, 20, 30, 40], "output_lens": [4, 4, "x", 0],
            "ttfts": [0.1, 0.2, 0.3, 0.0], "itls": [[0.01] * 3, [0.02] * 3, [0.03] * 3, []],
            "start_times": [5.0, 5.5, 6.0, 6.1], "errors": ["", "", "", "HTTP 500"]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    out = kvscope_here("import-bench", str(tmp_path / "b.json"), "--session", str(tmp_path / "b.kvscope"))
    assert out.returncode == 0, out.stderr
    assert "3 requests imported, 1 failed, 1 values not numbers" in out.stdout
    with open_session(tmp_path / "b.kvscope") as s:
        assert s.notes() == []
        rows = s.rows("SELECT ttft_s, e2e_s, generation_tokens FROM requests ORDER BY request_id")
        rep = build_report(s)
    assert rows == [(0.1, pytest.approx(0.13), 4), (0.2, pytest.approx(0.26), 4),
                    (0.3, pytest.approx(0.39), None)]
    assert rep["requests_finished"] == 3 and rep["engine"]["source"] == "bench"
    assert rep["cost"]["generation_tokens"] == 8 and rep["cost"]["gpu_seconds"] is None
