"""Applying a finding's recommended setting and re-running the same workload removes the problem.

Saturation and thrash: the recommended ``num_gpu_blocks_override`` comes from the finding of the
recorded session, the scenario is re-run on a real engine at that size, and diagnosed again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.analysis.diagnosis import Finding, diagnose
from profiler.analysis.whatif import analyse, session_point
from profiler.session.reader import open_session
from tests.support import scenarios as sc

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "scenarios"


def _finding(path: Path, code: str) -> Finding:
    found = [f for f in diagnose(open_session(path)) if f.code == code]
    assert len(found) == 1
    return found[0]


def test_saturation_fix_removes_saturation_and_preemptions(tiny_model: Path, base: Path) -> None:
    before = sc.recorded(sc.SATURATION, tiny_model, base)
    f = _finding(before.path, "KV_SATURATION")
    blocks = f.settings["num_gpu_blocks_override"]
    after = sc.recorded(sc.SATURATION.with_blocks(blocks), tiny_model, base)
    assert after.returncode == 0, after.output_tail
    session = open_session(after.path)
    codes = {x.code for x in diagnose(session)}
    assert "KV_SATURATION" not in codes and "PREEMPTION_STORM" not in codes
    assert session.scalar("SELECT SUM(preemptions) FROM steps") == 0
    assert session.scalar("SELECT num_gpu_blocks FROM engines") == blocks
    peak = session.scalar("SELECT MAX(kv_usage_frac) FROM steps")
    assert peak < 0.95  # sized for 90 % at peak demand: never at the ceiling


def test_thrash_fix_keeps_the_prefixes_as_predicted(tiny_model: Path, base: Path) -> None:
    before = sc.recorded(sc.THRASH, tiny_model, base)
    f = _finding(before.path, "PREFIX_THRASH")
    blocks = f.settings["num_gpu_blocks_override"]
    predicted = analyse(open_session(before.path)).curve.hit_rate(blocks)
    after = sc.recorded(sc.THRASH.with_blocks(blocks), tiny_model, base)
    assert after.returncode == 0, after.output_tail
    session = open_session(after.path)
    assert "PREFIX_THRASH" not in {x.code for x in diagnose(session)}
    measured = session_point(session, 1).hit_rate
    assert measured >= f.metrics["measured_hit_rate"] + 0.3  # 19 % → ~70 %: the thrash is gone
    assert abs(measured - predicted) <= 0.05
