"""Streamlit entry point: page navigation and the session picker (``kvscope ui`` runs this file)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import state  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"

# (file in views/, title, icon); files that do not exist (optional pages) are skipped.
PAGES: list[tuple[str, str, str]] = [
    ("overview.py", "Overview", ":material/dashboard:"),
    ("timeline.py", "Timeline", ":material/timeline:"),
    ("memory.py", "Memory", ":material/memory:"),
    ("kv_cache.py", "KV cache", ":material/view_module:"),
    ("requests.py", "Requests", ":material/list_alt:"),
    ("replay.py", "Replay", ":material/play_circle:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("live.py", "Live", ":material/sensors:"),
    ("kv_events.py", "KV events", ":material/grid_view:"),
    ("whatif.py", "What if", ":material/science:"),
]


def main() -> None:
    """Configure the page, build the navigation, draw the picker, run the chosen page."""
    st.set_page_config(page_title="kvscope", page_icon=":material/memory:", layout="wide")
    pages = [
        st.Page(VIEWS / name, title=title, icon=icon, default=(name == "overview.py"))
        for name, title, icon in PAGES if (VIEWS / name).exists()
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown("### kvscope")
        src = state.pick_session()
    # Pages written against the plain key (What if, KV events) read the choice from here.
    st.session_state["session_path"] = str(src.path) if src is not None else None
    page.run()


main()
