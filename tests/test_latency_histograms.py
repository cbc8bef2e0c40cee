"""Latency histograms from /metrics: parsing, per-interval deltas, percentiles with their bucket,
the report's ``latency_s`` for attach sessions, and windows (no engine: the real-server checks are
in tests/test_live_engine.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from profiler.analysis.latency import (
    fill_report_latency,
    format_latency,
    histogram_latency,
    histogram_quantiles,
)
from profiler.analysis.report import build_report
from profiler.attach.histograms import HistogramTracker, bucket_rows, collect
from profiler.attach.metrics import parse_metrics
from profiler.session.reader import open_session
from profiler.session.writer import SessionWriter
from tests.support.engine import kvscope_here
from tests.support.fake_metrics import STEP, metrics_text

TTFT_LE = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def hist_text(name: str, observations: list[float], engine: str = "0",
              le: tuple[float, ...] = TTFT_LE, older_name: bool = False) -> str:
    """A vLLM-shaped histogram family holding ``observations``."""
    lab = f'engine="{engine}",model_name="m"'
    lines = [f"# HELP {name} h", f"# TYPE {name} histogram"]
    for b in (*le, math.inf):
        n = sum(1 for x in observations if x <= b)
        lines.append(f'{name}_bucket{{{lab},le="{"+Inf" if math.isinf(b) else b}"}} {float(n)}')
    lines += [f"{name}_count{{{lab}}} {float(len(observations))}",
              f"{name}_sum{{{lab}}} {sum(observations)}", f"{name}_created{{{lab}}} 1.0"]
    return "\n".join(lines) + "\n"


def scrape(*families: str) -> str:
    base = metrics_text({k: 10.0 * v for k, v in STEP.items()}, {"running": 1, "waiting": 0,
                                                                   "usage": 0.5}, 1.0)
    # drop the fake's own two histograms: these tests give their own
    keep = [ln for ln in base.splitlines() if "time_to_first_token" not in ln
            and "e2e_request_latency" not in ln]
    return "\n".join(keep) + "\n" + "".join(families)


def test_parse_maps_every_histogram_and_the_old_inter_token_name() -> None:
    text = scrape(hist_text("vllm:time_to_first_token_seconds", [0.03, 0.05]),
                  hist_text("vllm:time_per_output_token_seconds", [0.002]),
                  hist_text("vllm:e2e_request_latency_seconds", [0.7], engine="1"))
    s = parse_metrics(text, 1.0)
    assert set(s.engines["0"].histograms) == {"ttft", "itl"}
    assert set(s.engines["1"].histograms) == {"e2e"}
    ttft = s.engines["0"].histograms["ttft"]
    assert ttft.bounds[-1] == math.inf and ttft.count == 2 and ttft.sum_s == pytest.approx(0.08)
    assert ttft.cumulative[TTFT_LE.index(0.04)] == 1 and ttft.cumulative[-1] == 2
    # the counters and gauges are unchanged by the histogram lines
    assert s.engines["0"].counters["generation_tokens"] == 10 * STEP["vllm:generation_tokens_total"]


def test_new_name_wins_over_the_old_one() -> None:
    text = (hist_text("vllm:time_per_output_token_seconds", [9.0] * 5)
            + hist_text("vllm:inter_token_latency_seconds", [0.002]))
    hists = collect((s.name, s.labels, s.value) for s in _samples(text))
    assert hists["0"]["itl"].count == 1


def _samples(text: str):  # noqa: ANN202
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        yield from fam.samples


def test_impossible_histogram_is_left_out_with_one_problem() -> None:
    bad = hist_text("vllm:time_to_first_token_seconds", [0.03]).replace(
        'le="0.04"} 1.0', 'le="0.04"} NaN')
    problems: dict = {}
    hists = collect(((s.name, s.labels, s.value) for s in _samples(bad)), problems)
    assert "ttft" not in hists.get("0", {})
    assert list(problems) == [("latency:ttft", "impossible")]
    assert "not a finite number" in next(iter(problems.values()))


def test_tracker_counts_each_interval_once_and_survives_restarts() -> None:
    def h(obs: list[float]):  # noqa: ANN202
        return parse_metrics(scrape(hist_text("vllm:time_to_first_token_seconds", obs)), 1.0
                             ).engines["0"].histograms

    tr = HistogramTracker()
    assert tr.update(h([0.5] * 7), reset=False) is None  # baseline: history before the session
    d = tr.update(h([0.5] * 7 + [0.03, 0.05, 0.05, 3.0, 99.0]), reset=False)
    got = {(x.lo_s, x.hi_s): x.observations for x in d}
    assert got == {(0.02, 0.04): 1, (0.04, 0.06): 2, (2.5, 5.0): 1, (5.0, math.inf): 1}
    assert tr.update(h([0.5] * 7 + [0.03, 0.05, 0.05, 3.0, 99.0]), reset=False) == []
    # a restart: the histogram counts from zero again, all of it is new
    d = tr.update(h([0.003]), reset=True)
    assert [(x.lo_s, x.hi_s, x.observations) for x in d] == [(0.001, 0.005, 1)]
    # counts going down without an announced restart are a restart too
    d = tr.update(h([]), reset=False)
    assert d == []
    rows = bucket_rows(3, 5.0, tr.update(h([0.2, 80.0]), reset=False))
    assert [(r.engine_id, r.t_unix_s, r.metric, r.lo_s, r.hi_s, r.observations) for r in rows] == [
        (3, 5.0, "ttft", 0.1, 0.25, 1), (3, 5.0, "ttft", 5.0, None, 1)]


def test_quantiles_lie_in_the_bucket_that_holds_the_exact_value() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(-2.5, 1.0, 2000)
    le = np.array((*TTFT_LE, math.inf))
    idx = np.searchsorted(le, values, side="left")
    counts = np.bincount(idx, minlength=len(le))
    lo = np.concatenate(([0.0], le[:-1]))
    qs = histogram_quantiles(lo, [None if math.isinf(x) else x for x in le], counts, (0.5, 0.95, 0.99))
    for x in qs:
        exact = float(np.quantile(values, x.q))
        assert x.lo_s <= exact <= (x.hi_s if x.hi_s is not None else math.inf), (x, exact)
        assert x.lo_s <= x.value_s <= (x.hi_s or math.inf)


def test_quantile_in_the_open_bucket_is_its_lower_bound() -> None:
    (q,) = histogram_quantiles([5.0], [None], [3], (0.99,))
    assert (q.value_s, q.lo_s, q.hi_s, q.bucket_text()) == (5.0, 5.0, None, "≥ 5 s")
    assert histogram_quantiles([0.0], [1.0], [0], (0.5,)) == []


def write_attach_like(path: Path, t0: float = 1_700_000_000.0) -> None:
    """An attach-shaped session: scraped steps and latency buckets over 20 s, as attach writes them."""
    w = SessionWriter(path)
    w.set_meta(started_unix_s=t0, attach_urls=["http://127.0.0.1:1"], command=["kvscope", "attach"])
    w.execute_now("INSERT INTO engines (engine_id, source, label, num_gpu_blocks, block_size) "
                  "VALUES (1, 'scrape', 'http://127.0.0.1:1', 100, 16)")
    for i in range(80):
        t = t0 + 0.25 * (i + 1)
        w.append("steps", (1, t, 2, 0, 0.3, 100, 50, None, None, 0, 100, 20, 1 if i % 4 == 0 else 0, 1))
        if i % 4 == 0:  # one request finishes every second: TTFT 30-40 ms early, 70-80 ms late
            bucket = (0.02, 0.04) if i < 40 else (0.06, 0.08)
            w.append("latency_buckets", (1, t, "ttft", *bucket, 1))
            w.append("latency_buckets", (1, t, "e2e", 0.3, 0.5, 1))
    w.close()


def test_report_fills_latency_from_histograms_with_resolution(tmp_path: Path) -> None:
    path = tmp_path / "attach.kvscope"
    write_attach_like(path)
    with open_session(path) as s:
        rep = build_report(s)
    lat = rep["latency_s"]
    assert lat["source"] == "histogram"
    assert rep["requests_finished"] == 20
    # 10 requests in 0.02-0.04, 10 in 0.06-0.08: p50 is the top of the first bucket
    assert lat["ttft_p50"] == pytest.approx(0.04)
    assert lat["resolution_s"]["ttft_p50"] == [0.02, 0.04]
    assert lat["resolution_s"]["ttft_p95"] == [0.06, 0.08] and 0.06 <= lat["ttft_p95"] <= 0.08
    assert lat["resolution_s"]["e2e_p99"] == [0.3, 0.5]
    assert "queue_p50" not in lat  # not exported by this server: no key invented
    assert "buckets 0.02–0.04, 0.06–0.08, 0.06–0.08 s" in format_latency(lat)
    json.dumps(rep, allow_nan=False)


def test_window_report_counts_only_the_window(tmp_path: Path) -> None:
    path = tmp_path / "attach.kvscope"
    write_attach_like(path)
    out = kvscope_here("report", str(path), "--json", "--last-s", "9.9")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    # the last 9.9 s: 40 scrape intervals, 10 finished requests, all of them 60-80 ms
    assert rep["steps"] == 40 and rep["requests_finished"] == 10
    assert rep["latency_s"]["resolution_s"]["ttft_p50"] == [0.06, 0.08]
    with open_session(path) as s:
        hist = histogram_latency(s, t0_unix_s=1_700_000_000.0 + 10.1)
    assert hist["ttft"].observations == 10
    bad = kvscope_here("report", str(path), "--last-s", "0")
    assert bad.returncode == 2 and "--last-s" in bad.stderr


def test_recorded_session_keeps_its_per_request_latency() -> None:
    with open_session(Path(__file__).parents[1] / "sessions" / "healthy.kvscope") as s:
        rep = build_report(s)
        assert rep["latency_s"]["source"] == "requests" and rep["latency_s"]["resolution_s"] is None
        assert rep["latency_s"]["ttft_p50"] is not None
        assert s.notes() == [] and len(s.table("latency_buckets")) == 0
        assert fill_report_latency({"ttft_p50": None}, s) == {
            "ttft_p50": None, "source": None, "resolution_s": None}


def test_compare_gives_no_verdict_inside_one_bucket(tmp_path: Path) -> None:
    from dashboard.data.compare import key_number_deltas

    path = tmp_path / "attach.kvscope"
    write_attach_like(path)
    with open_session(path) as s:
        a = build_report(s)
    b = json.loads(json.dumps(a))
    b["latency_s"]["ttft_p50"] = 0.03  # same bucket 0.02-0.04: not a difference it can show
    b["latency_s"]["e2e_p95"] = 0.9
    b["latency_s"]["resolution_s"]["e2e_p95"] = [0.8, 1.0]
    d = key_number_deltas(a, b).set_index("metric")
    assert d.loc["TTFT p50 (s)", "B is"] == ""
    assert d.loc["e2e p95 (s)", "B is"] == "worse"
    assert d.loc["e2e p95 (s)", "resolution"] == "A: bucket 0.3–0.5 s · B: bucket 0.8–1 s"
