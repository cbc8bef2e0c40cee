"""The What-if page, reached through the dashboard's own navigation (``dashboard/app.py``), on a real
recorded thrash session (engine tier) and on a bundled session without prompt-block data (unit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.analysis.whatif import analyse
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT

pytestmark = pytest.mark.browser  # the dashboard as a user runs it (Streamlit AppTest)

NO_PROMPT_BLOCKS = ROOT / "sessions" / "gpu_h200_fragmentation.kvscope"
"""Recorded without prompt-block hashes or KV events: nothing to model."""


@pytest.fixture(scope="module")
def thrash(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> sc.Recorded:
    rec = sc.recorded(sc.THRASH, tiny_model, tmp_path_factory.getbasetemp() / "scenarios")
    assert rec.returncode == 0, rec.output_tail
    return rec


@pytest.mark.engine
def test_page_renders_for_the_chosen_session(thrash: sc.Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, thrash.path), "whatif")
    assert at.header[0].value.startswith("What-if")
    assert not at.error and not at.info
    values = {m.label: m.value for m in at.metric}
    assert values["KV cache"] == "24 blocks"
    w = analyse(open_session(thrash.path))
    assert values["measured hit rate"] == f"{w.actual.hit_rate:.1%}"
    assert values["unbounded cache"] == f"{w.curve.max_hit_rate:.1%}"
    table = at.dataframe[0].value
    assert table["num_blocks"].tolist() == [12, 24, 48, 96]
    assert len(at.get("vega_lite_chart")) == 2  # the cache-size curve and the block-size what-if


def test_session_without_prompt_blocks_gets_one_info_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        analyse(open_session(NO_PROMPT_BLOCKS))  # the premise: no what-if for this session
    at = go(open_app(monkeypatch, NO_PROMPT_BLOCKS), "whatif")
    assert at.header[0].value.startswith("What-if")
    (info,) = [i.value.replace("\\", "") for i in at.info]  # the page escapes Markdown in the reason
    assert info == ("No what-if for this session: session has no prompt-block hashes and no KV "
                    "events: what-if needs one of them")
    assert not at.error and not at.metric and not at.get("vega_lite_chart")
