"""Issue 14's dashboard sections on the bundled sessions, through the app's navigation (AppTest):
the numbers shown are the report's, formatted, and what was not measured reads n/a."""

from __future__ import annotations

import pytest

from dashboard.data.reports import compute_report
from profiler.analysis.spec_decode import mean_accepted_length
from profiler.units import fmt_pct, fmt_s
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT

pytestmark = pytest.mark.browser  # the dashboard as a user runs it (Streamlit AppTest)

SESSIONS = ROOT / "sessions"
SPEC, SPEC_OFF, GROUPS = (SESSIONS / f"{n}.kvscope" for n in ("spec_ngram", "spec_ngram_off", "sliding_window"))


def _metrics(at: object) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}  # type: ignore[attr-defined]


def _no_none(at: object) -> None:
    cells = [str(v) for t in at.table for v in t.value.to_numpy().ravel()]  # type: ignore[attr-defined]
    assert cells and "None" not in cells and "nan" not in cells


def test_overview_shows_speculative_decoding_and_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = compute_report(SPEC)
    at = go(open_app(monkeypatch, SPEC), "overview")
    m = _metrics(at)
    _no_none(at)
    assert m["Method"] == "ngram"
    assert m["Acceptance rate"] == fmt_pct(rep["spec_decode"]["acceptance_rate"])
    assert m["Mean accepted length"] == f"{mean_accepted_length(rep['spec_decode']):.2f}"
    assert m["Drafter weights"] == "none"
    assert "GPU-h / M tokens" not in m  # a CPU engine held no GPU: said in the not-measured line
    assert any("GPU cost per token (no GPU held: the engine ran on the CPU)" in c.value for c in at.caption)
    assert m["Decode per token p95"] == fmt_s(rep["latency_s"]["decode_per_token_p95"])
    shown = [t.value for t in at.table]
    by_len = next(t for t in shown if "acceptance rate" in t.columns)
    assert list(by_len["prompts"]) == ["short", "long"]
    assert by_len["acceptance rate"].iloc[1] == fmt_pct(rep["spec_decode_by_prompt_length"]["long"]["acceptance_rate"])


def test_requests_page_shows_prefill_decode_and_prompt_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = compute_report(SPEC)
    at = go(open_app(monkeypatch, SPEC), "requests")
    _no_none(at)
    tables = [t.value for t in at.table]
    itl = next(t for t in tables if list(t.columns) == ["metric", "p50", "p95", "p99"]).set_index("metric")
    assert itl.loc["decode per token (ITL)", "p50"] == fmt_s(rep["latency_s"]["decode_per_token_p50"])
    pct = next(t for t in tables if "requests" in t.columns and "prefill" in set(t["metric"])).set_index("metric")
    assert pct.loc["prefill", "p99"] == fmt_s(rep["latency_s"]["prefill_p99"])  # main's table, same number
    split = rep["latency_s"]["by_prompt_length"]
    buckets = next(t for t in tables if "prompts" in t.columns)
    assert set(buckets["prompts"]) == {f"short (< {split['split_tokens']:,} tokens)",
                                       f"long (≥ {split['split_tokens']:,} tokens)"}
    long_ttft = buckets[(buckets["prompts"].str.startswith("long")) & (buckets["metric"] == "TTFT")]
    assert long_ttft["p95"].iloc[0] == fmt_s(split["long"]["ttft_p95"])


def test_kv_cache_page_shows_each_group(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = compute_report(GROUPS)
    at = go(open_app(monkeypatch, GROUPS), "kv_cache")
    _no_none(at)
    assert any(h.value == "KV-cache groups (2)" for h in at.subheader)
    table = next(t.value for t in at.table if "kind" in t.value.columns)
    assert list(table["kind"]) == ["sliding_window", "full_attention"]
    assert list(table["sliding window (tokens)"]) == ["256", "none"]
    assert list(table["peak blocks held"]) == [str(g["peak_blocks_used"]) for g in rep["kv_cache"]["groups"]]
    assert len(at.get("vega_lite_chart")) >= 3  # capacity, demand, blocks per group


def test_compare_shows_what_speculation_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    rep_a, _ = compute_report(SPEC)
    rep_b, _ = compute_report(SPEC_OFF)
    at = go(open_app(monkeypatch, SPEC, SPEC_OFF), "compare")
    _no_none(at)
    assert any("A speculated" in m.value for m in at.markdown)
    swing = next(t.value for t in at.table if "with" in t.value.columns).set_index("metric")
    assert swing.loc["acceptance rate", "with"] == fmt_pct(rep_a["spec_decode"]["acceptance_rate"])
    assert swing.loc["acceptance rate", "without"] == swing.loc["acceptance rate", "delta"] == "n/a"
    assert swing.loc["drafter weights (bytes)", "with"] == "0 bytes"
    assert swing.loc["KV blocks", "delta"] == "+0"
    serving = next(t.value for t in at.table if "TTFT p99" in set(t.value.get("metric", []))).set_index("metric")
    assert serving.loc["TTFT p99", "B: spec_ngram_off"] == fmt_s(rep_b["latency_s"]["ttft_p99"])
    assert serving.loc["GPU-seconds", "A: spec_ngram"] == "n/a"

