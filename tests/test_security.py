"""Session text is data: a shared session cannot make the dashboard fetch a URL (Markdown images,
HTML) nor drive the terminal of someone running ``kvscope report`` (escape sequences)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from profiler.units import escape_markdown, printable
from tests.support.dashboard import go, open_app
from tests.support.engine import ROOT, kvscope

IMG_MD = "![x](http://127.0.0.1:9/track.png)"
IMG_HTML = "<img src=http://127.0.0.1:9/track2.png>"
HOSTILE = f"{IMG_MD} {IMG_HTML} :red[boom] $x$ \x1b[2J\x1b]0;pwned\x07"
MARKDOWN_TYPES = ("markdown", "caption", "title", "header", "subheader", "error", "warning",
                  "info", "success")
RAW = re.compile(r"(?<!\\)!\[x\]\(|(?<!\\)<img")
"""Unescaped Markdown image or HTML tag: what the browser would act on."""


@pytest.fixture(scope="module")
def hostile_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime-OOM session with the attacker's text in the OOM event (message and ``where``),
    every event message, the model, the GPU names and the request ids."""
    path = tmp_path_factory.mktemp("hostile") / "oom_runtime.kvscope"
    shutil.copyfile(ROOT / "sessions" / "gpu_h200_oom_runtime.kvscope", path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET message = ? || ' ' || message", (HOSTILE,))
    conn.execute("UPDATE events SET details_json = json_set(details_json, '$.where', ?) "
                 "WHERE kind = 'oom'", (HOSTILE,))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (json.dumps(HOSTILE),))
    conn.execute("UPDATE gpus SET name = ?", (HOSTILE,))
    conn.execute("UPDATE requests SET request_id = ? || request_id", (HOSTILE,))
    conn.commit()
    conn.close()
    return path


def test_escape_helpers() -> None:
    assert "\x1b" not in printable(HOSTILE) and "\x07" not in printable(HOSTILE)
    assert "\n" not in printable("a\nb\rc")
    assert not RAW.search(escape_markdown(HOSTILE))
    assert escape_markdown("a_b*c _d_") == r"a_b\*c \_d\_"


def test_text_report_has_no_escape_sequences(hostile_session: Path) -> None:
    proc = kvscope("report", str(hostile_session), timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "track.png" in proc.stdout  # shown, as text
    assert "[CRITICAL] OOM_" in proc.stdout


def _markdown_texts(at: AppTest) -> list[str]:
    out = []
    for kind in MARKDOWN_TYPES:
        for el in at.get(kind):
            out.append(str(getattr(el, "value", "") or getattr(el.proto, "body", "")))
    return out


@pytest.mark.browser
@pytest.mark.parametrize("page", ["sessions", "overview", "timeline", "memory", "requests", "replay",
                                  "kv_cache", "whatif", "kv_events", "simulate", "compare"])
def test_dashboard_renders_session_text_as_text(monkeypatch: pytest.MonkeyPatch,
                                                hostile_session: Path, page: str) -> None:
    at = open_app(monkeypatch, hostile_session)
    if page != "sessions":  # the page the dashboard opens on
        go(at, page)
    texts = _markdown_texts(at)
    assert texts
    offending = [t for t in texts if RAW.search(t) or "\x1b" in t]
    assert not offending, offending
    if page == "overview":  # the finding quoting the OOM is there, escaped
        assert any("track.png" in t for t in texts), texts
