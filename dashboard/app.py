"""Streamlit entry point: page navigation and the session picker (``kvscope ui`` runs this file)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import state  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "views"  # not "pages/": Streamlit treats that name as its own multipage folder

# (file in views/, title, icon); files that do not exist (optional pages) are skipped.
PAGES: list[tuple[str, str, str]] = [
    ("sessions.py", "Sessions", ":material/folder_open:"),
    ("overview.py", "Overview", ":material/dashboard:"),
    ("timeline.py", "Timeline", ":material/timeline:"),
    ("memory.py", "Memory", ":material/memory:"),
    ("kv_cache.py", "KV cache", ":material/view_module:"),
    ("requests.py", "Requests", ":material/list_alt:"),
    ("replay.py", "Replay", ":material/play_circle:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("fleet.py", "Fleet", ":material/dns:"),
    ("live.py", "Live", ":material/sensors:"),
    ("kv_events.py", "KV events", ":material/grid_view:"),
    ("preemptions.py", "Preemptions", ":material/swap_vert:"),
    ("tiers.py", "Tiers", ":material/layers:"),
    ("whatif.py", "What if", ":material/science:"),
    ("simulate.py", "Simulate a fix", ":material/tune:"),
]


def main() -> None:
    """Configure the page, build the navigation, draw the picker, run the chosen page."""
    st.set_page_config(page_title="kvscope", page_icon=":material/memory:", layout="wide")
    state.keep_widget_state()
    pages = [
        st.Page(PAGES_DIR / name, title=title, icon=icon, default=(name == "sessions.py"))
        for name, title, icon in PAGES if (PAGES_DIR / name).exists()
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown("### kvscope")
        state.pick_session()
    state.note_page(page.title)
    try:
        page.run()
    finally:  # also after st.stop(): the address keeps the session, zoom and focused finding
        state.write_current_link()


main()
