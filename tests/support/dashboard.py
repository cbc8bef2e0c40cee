"""The dashboard under Streamlit's AppTest, always through ``dashboard/app.py`` and its navigation
(the pages find their session with ``dashboard.state.current_session()``, i.e. the sidebar picker)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import streamlit.components.v2.manifest_scanner as _manifest_scanner
from streamlit.testing.v1 import AppTest

from dashboard.data.sources import ENV_UI_SESSIONS

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"

# Every new AppTest scans the metadata of every installed distribution for Streamlit components
# (about 1.7 s with vLLM's dependencies installed, most of a small page's test). The installed
# packages do not change during a test run: scan once.
if not hasattr(_manifest_scanner.scan_component_manifests, "cache_info"):
    _manifest_scanner.scan_component_manifests = functools.cache(_manifest_scanner.scan_component_manifests)


def open_app(monkeypatch: pytest.MonkeyPatch, *sessions: Path, timeout_s: float = 120) -> AppTest:
    """The dashboard offering ``sessions`` (as ``kvscope ui`` would; the first one is selected),
    after its first run, which must raise nothing."""
    monkeypatch.setenv(ENV_UI_SESSIONS, os.pathsep.join(str(p) for p in sessions))
    at = AppTest.from_file(str(APP), default_timeout=timeout_s)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def go(at: AppTest, page: str) -> AppTest:
    """Switch to ``dashboard/views/<page>.py`` through the app's navigation and run it."""
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at
