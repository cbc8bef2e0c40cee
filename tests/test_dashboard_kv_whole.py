"""The whole-KV-cache views on bundled real CPU sessions (AppTest through app.py's navigation):
Preemptions (every preemption, sortable), the Timeline's preemption marks, each request's
preemptions on Requests, token occupancy and the tier split on KV cache, Tiers, block sizes on
What if. Every number shown is the report's."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.data.kv_whole import compute_forensics
from dashboard.data.reports import compute_report
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT

pytestmark = pytest.mark.browser  # the dashboard as a user runs it (Streamlit AppTest)

SESSIONS = ROOT / "sessions"
FORENSICS = SESSIONS / "kv_forensics.kvscope"
DISK_TIER = SESSIONS / "disk_tier.kvscope"
BELOW = SESSIONS / "prefix_below_block.kvscope"


def metric(at: Any, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def specs(at: Any) -> list[str]:
    """The Vega-Lite spec text of every chart on the page."""
    return [c.proto.spec for c in at.get("vega_lite_chart")]


def test_preemptions_page_counts_equal_the_overview_and_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = compute_report(FORENSICS)
    p = rep["preemption"]
    assert p["count"] and p["count"] == rep["preemptions"]
    at = go(open_app(monkeypatch, FORENSICS), "preemptions")
    assert metric(at, "Preemptions") == f"{p['count']:,}"
    assert metric(at, "Requests preempted") == f"{p['requests']:,}"
    assert metric(at, "Tokens prefilled again") == f"{p['recomputed_tokens']:,}"
    assert metric(at, "Costliest request") == p["worst_request"]["request_id"]
    table = at.dataframe[0].value
    assert len(table) == p["count"]
    assert {"computed_tokens", "blocks_freed", "kv_usage_before_frac", "kv_usage_after_frac",
            "recomputed_tokens", "reason"} <= set(table.columns)
    assert any(b.label == "Preemptions CSV" for b in at.get("download_button"))


def test_preemptions_page_without_a_record_names_no_arbitrary_worst(monkeypatch: pytest.MonkeyPatch) -> None:
    """kv_saturation has vLLM's per-request counts only, every one 1: no request is the worst."""
    at = go(open_app(monkeypatch, SESSIONS / "kv_saturation.kvscope"), "preemptions")
    assert metric(at, "Most preempted request") == "none twice"
    assert not [m for m in at.metric if m.label == "Costliest request"]


def test_timeline_marks_every_recorded_preemption(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, FORENSICS), "timeline")
    assert any("Each preemption: tokens it discarded" in s for s in specs(at))
    f = compute_forensics(FORENSICS)
    assert len(f.table) == f.summary["count"]


def test_requests_page_shows_a_requests_preemptions(monkeypatch: pytest.MonkeyPatch) -> None:
    f = compute_forensics(FORENSICS)
    top = f.table["request_key"].value_counts()
    at = go(open_app(monkeypatch, FORENSICS), "requests")
    box = next(b for b in at.selectbox if str(b.key).startswith("preempted-req::"))
    assert box.value == str(top.index[0])  # most preempted first
    assert len(at.dataframe[-1].value) == int(top.iloc[0])
    other = str(top.index[-1])
    box.set_value(other).run()
    assert len(at.dataframe[-1].value) == int(top.loc[other])


def test_kv_cache_page_shows_token_occupancy(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, FORENSICS), "kv_cache")
    assert any("Blocks in use vs token slots actually holding tokens" in s for s in specs(at))
    at = go(open_app(monkeypatch, DISK_TIER), "kv_cache")
    assert any("Where looked-up prompt tokens came from" in s for s in specs(at))


def test_tiers_page_lists_the_reports_kv_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = compute_report(DISK_TIER)
    at = go(open_app(monkeypatch, DISK_TIER), "tiers")
    table = at.dataframe[0].value
    assert list(table["medium"]) == [t["medium"] for t in rep["kv_tiers"]] == ["GPU", "DISK"]
    disk = rep["kv_tiers"][1]
    row = table.set_index("medium").loc["DISK"]
    assert row["hits_tokens"] == f"{disk['hits_tokens']:,}"
    assert row["stored_bytes"] == "n/a"  # the connector does not report bytes: not measured
    assert any("Hit rate per tier" in s for s in specs(at))


def test_tiers_page_on_a_session_without_tiers_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, FORENSICS), "tiers")
    assert any("No KV tier behind the GPU" in i.value for i in at.info)
    residency = at.dataframe[1].value.set_index("quantity")
    assert residency.loc["evictions", "vllm"] != "n/a"  # recorded with --kv-cache-metrics


def test_whatif_page_shows_block_sizes_beside_the_cache_size_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, BELOW), "whatif")
    assert any("Prefix hit rate by block size" in s for s in specs(at))
