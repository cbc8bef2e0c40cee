"""Many sessions together (issue 15): ``kvscope report A B C ...`` and the dashboard's Compare page
with more than two sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dashboard.data.reports import compute_report
from profiler.analysis.report_set import build_report_set
from profiler.session.reader import open_session
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT, kvscope_here

SESSIONS = ROOT / "sessions"
THREE = [SESSIONS / f"{n}.kvscope" for n in ("healthy", "kv_saturation", "gpu_h200_kv_pressure")]


def test_report_set_json_keeps_each_report_and_adds_them_up() -> None:
    out = kvscope_here("report", "--json", *map(str, THREE))
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["kvscope_report_set"] == 1 and obj["errors"] == []
    singles = [compute_report(p)[0] for p in THREE]
    assert obj["reports"] == json.loads(json.dumps(singles))  # each one as `report --json` has it
    c = obj["combined"]
    assert c["sessions"] == 3 and c["steps"] == sum(r["steps"] for r in singles)
    assert c["preemptions"] == sum(r["preemptions"] for r in singles)
    q = sum(r["prefix_cache"]["queries_tokens"] for r in singles)
    h = sum(r["prefix_cache"]["hits_tokens"] for r in singles)
    assert c["prefix_cache"] == {"queries_tokens": q, "hits_tokens": h, "hit_rate": h / q}
    e2e = []
    for p in THREE:  # percentiles over every request, not an average of the sessions' ones
        with open_session(p) as s:
            e2e += [v for (v,) in s.rows("SELECT e2e_s FROM requests") if v is not None]
    assert c["latency_s"]["e2e_p95"] == pytest.approx(float(np.quantile(e2e, 0.95)))
    assert c["findings"] == {"KV_SATURATION": 2, "PREEMPTION_STORM": 2, "PREFIX_THRASH": 1,
                             "QUEUEING": 1}


def test_report_set_null_is_not_counted_as_zero() -> None:
    obj = build_report_set([SESSIONS / "gpu_h200_oom_startup.kvscope",
                            SESSIONS / "gpu_h200_fragmentation.kvscope"])
    assert [r["preemptions"] for r in obj["reports"]] == [None, None]
    assert obj["combined"]["preemptions"] is None and obj["combined"]["prefix_cache"]["hit_rate"] is None


def test_report_set_text_has_a_column_per_session_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.kvscope"
    bad.write_text("nope")
    out = kvscope_here("report", *map(str, THREE), str(bad))
    assert out.returncode == 2
    assert out.stderr == f"kvscope: {bad}: not a kvscope session (file is empty or truncated)\n"
    header = out.stdout.splitlines()[0].split()
    assert header == ["healthy", "kv_saturation", "gpu_h200_kv_pressure", "all", "3"]
    steps = next(line for line in out.stdout.splitlines() if line.startswith("steps")).split()
    assert steps[1:] == ["160", "5,208", "4,570", "9,938"]
    assert "None" not in out.stdout and "nan" not in out.stdout.lower().split()


@pytest.mark.browser
def test_compare_page_takes_many_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, *THREE), "compare")
    two = len(at.get("vega_lite_chart"))
    at.multiselect(key="compare_more").set_value(["gpu_h200_kv_pressure"]).run()
    assert not at.exception and not at.error
    table = next(t.value for t in at.table if "C: gpu_h200_kv_pressure" in t.value.columns)
    names = ["A: healthy", "B: kv_saturation", "C: gpu_h200_kv_pressure"]
    assert list(table.columns) == ["metric", *names]
    row = table.set_index("metric").loc["requests finished"]
    assert [row[n] for n in names] == [f"{compute_report(p)[0]['requests_finished']:,}" for p in THREE]
    drawn: list[Any] = list(at.get("vega_lite_chart"))
    assert len(drawn) == two == 5
    for chart in drawn:  # Streamlit sends each chart's rows as Arrow bytes
        rows = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all()
        assert set(rows.column("session").to_pylist()) == set(names)
