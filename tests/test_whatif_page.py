"""The what-if dashboard page, run by Streamlit's AppTest on a real recorded thrash session."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from profiler.analysis.whatif import analyse
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import ROOT

pytestmark = pytest.mark.engine

PAGE = str(ROOT / "dashboard" / "views" / "whatif.py")


@pytest.fixture(scope="module")
def thrash(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> sc.Recorded:
    rec = sc.recorded(sc.THRASH, tiny_model, tmp_path_factory.getbasetemp() / "scenarios")
    assert rec.returncode == 0, rec.output_tail
    return rec


def test_dashboard_page_renders_for_the_chosen_session(thrash: sc.Recorded) -> None:

    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["session_path"] = str(thrash.path)
    at.run()
    assert not at.exception
    values = {m.label: m.value for m in at.metric}
    assert values["KV cache"] == "24 blocks"
    w = analyse(open_session(thrash.path))
    assert values["measured hit rate"] == f"{w.actual.hit_rate:.1%}"
    assert values["unbounded cache"] == f"{w.curve.max_hit_rate:.1%}"
    table = at.dataframe[0].value
    assert table["num_blocks"].tolist() == [12, 24, 48, 96]


def test_dashboard_page_without_a_session_asks_for_one() -> None:

    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.info[0].value == "Choose a session first."
