"""Start the Streamlit server for ``kvscope ui`` with the dashboard's modules and sessions warm.

    python -m dashboard.serve [SESSION ...] [--host 127.0.0.1] [--port 8501]

Before serving, the dashboard's modules are imported and every offered session is summarised
(one scan each, about 1 s per million steps), so the first page a browser opens draws from
memory instead of reading a million-step file while the user waits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
WARM_MAX = 16
"""Sessions summarised before serving (the rest load when first opened)."""


def warm(paths: list[Path]) -> None:
    """Load (and remember) every session's summary; bad files are left for the page to report."""
    from dashboard.data import load_session_memo
    from profiler.schema import SessionFormatError

    for p in paths:
        try:
            load_session_memo(p)
        except (SessionFormatError, OSError):
            continue


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, warm up in the background, run ``streamlit run dashboard/app.py``."""
    ap = argparse.ArgumentParser(prog="python -m dashboard.serve")
    ap.add_argument("sessions", nargs="*")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8501)
    a = ap.parse_args(argv)
    if a.sessions:
        os.environ["KVSCOPE_UI_SESSIONS"] = os.pathsep.join(str(Path(s).resolve()) for s in a.sessions)
    import altair  # noqa: F401  (imported now rather than on the first page view)

    from dashboard import charts  # noqa: F401
    from dashboard.sources import discover_sessions

    paths = [s.path for s in discover_sessions()][:WARM_MAX]
    started = time.perf_counter()
    warm(paths)
    print(f"kvscope: {len(paths)} session(s) ready in {time.perf_counter() - started:.1f} s; "
          f"serving on http://{a.host}:{a.port}", flush=True)
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(APP), "--server.address", a.host, "--server.port", str(a.port),
                "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return int(stcli.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
