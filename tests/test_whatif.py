"""``kvscope whatif`` and the what-if chart on a real recorded thrash session; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard.charts.whatif import curve_frame, marks_frame, whatif_chart
from profiler.analysis.whatif import analyse
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import kvscope

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def thrash(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> sc.Recorded:
    rec = sc.recorded(sc.THRASH, tiny_model, tmp_path_factory.getbasetemp() / "scenarios")
    assert rec.returncode == 0, rec.output_tail
    return rec


@pytest.fixture(scope="module")
def startup_oom(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> sc.Recorded:
    return sc.recorded(sc.STARTUP_OOM, tiny_model, tmp_path_factory.getbasetemp() / "scenarios")


def test_whatif_json_predicts_each_size_and_matches_the_measured_point(thrash: sc.Recorded) -> None:
    out = kvscope("whatif", str(thrash.path), "--blocks", "12", "24", "48", "96", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    rates = [p["hit_rate"] for p in obj["predictions"]]
    assert [p["num_blocks"] for p in obj["predictions"]] == [12, 24, 48, 96]
    assert [p["tokens"] for p in obj["predictions"]] == [12 * 128, 24 * 128, 48 * 128, 96 * 128]
    assert rates == sorted(rates) and rates[0] < rates[-1]  # more cache never hurts LRU
    assert rates[-1] == pytest.approx(obj["max_hit_rate"])
    a = obj["actual"]
    assert a["num_blocks"] == 24 and a["predicted_hit_rate"] == rates[1]
    assert abs(a["predicted_hit_rate"] - a["hit_rate"]) <= 0.05
    assert obj["requests"] == sc.THRASH.requests
    assert 24 < obj["blocks_for_90pct_of_max"] < 96


def test_whatif_text_output_is_a_table(thrash: sc.Recorded) -> None:
    out = kvscope("whatif", str(thrash.path), "--blocks", "24", "48")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith("actual    24 blocks: measured hit rate")
    assert lines[-2].split()[:2] == ["24", "3072"] and lines[-1].split()[:2] == ["48", "6144"]


@pytest.mark.parametrize("args, needle", [
    (["--blocks", "0"], "cache sizes must be positive"),
    (["--blocks", "-3"], "cache sizes must be positive"),
])
def test_whatif_rejects_bad_sizes_in_one_line(thrash: sc.Recorded, args: list[str], needle: str) -> None:
    out = kvscope("whatif", str(thrash.path), *args)
    assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_whatif_on_a_session_without_prompt_blocks_says_why(startup_oom: sc.Recorded) -> None:
    out = kvscope("whatif", str(startup_oom.path), "--blocks", "8")
    assert out.returncode == 2
    assert "no prompt-block hashes and no KV events" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_whatif_on_missing_and_non_session_files(tmp_path: Path) -> None:
    out = kvscope("whatif", str(tmp_path / "nope.kvscope"), "--blocks", "8")
    assert out.returncode == 2 and "no such session file" in out.stderr
    junk = tmp_path / "junk.kvscope"
    junk.write_bytes(b"this is not sqlite at all")
    out = kvscope("whatif", str(junk), "--blocks", "8")
    assert out.returncode == 2 and "not a kvscope session" in out.stderr


def test_chart_marks_the_real_size_and_both_rates(thrash: sc.Recorded) -> None:
    w = analyse(open_session(thrash.path))
    marks = marks_frame(w)
    assert marks["num_blocks"].tolist() == [24, 24]
    assert marks["kind"].tolist() == ["measured", "model"]
    assert marks["hit_rate"].iloc[0] == pytest.approx(w.actual.hit_rate)
    curve = curve_frame(w, 96)
    assert curve["num_blocks"].min() == 1 and curve["num_blocks"].max() == 96
    assert curve["hit_rate"].is_monotonic_increasing
    spec = whatif_chart(w, 96).to_dict()
    # curve, its step points (the readout), real-size rule, measured/model points, unbounded line
    assert len(spec["layer"]) == 5
    line, steps = spec["layer"][:2]
    assert line["mark"]["type"] == "line" and "tooltip" not in line["encoding"]
    assert {t["field"] for t in steps["encoding"]["tooltip"]} == {"num_blocks", "tokens", "hit_rate"}
