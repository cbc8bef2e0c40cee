"""``kvscope ui``: start the Streamlit dashboard as a subprocess (collection never imports Streamlit)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_APP = ROOT / "dashboard" / "app.py"


def add_parser(sub: Any) -> None:
    """Register ``kvscope ui``."""
    ui = sub.add_parser("ui", help="open the dashboard")
    ui.add_argument("sessions", nargs="*")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=8501)
    ui.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the Streamlit dashboard on the given (or bundled) sessions."""
    return launch(args.sessions, host=args.host, port=args.port)


def launch(sessions: list[str], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve ``dashboard/app.py`` on ``host:port`` (127.0.0.1 by default) for ``sessions``.

    ``dashboard.serve`` runs Streamlit after warming the sessions up; with no session given the
    dashboard offers the bundled ones plus the user's folder.
    """
    env = dict(os.environ)
    if sessions:
        env["KVSCOPE_UI_SESSIONS"] = os.pathsep.join(str(Path(s).resolve()) for s in sessions)
    else:
        env.pop("KVSCOPE_UI_SESSIONS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "dashboard.serve", "--host", host, "--port", str(port)]
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
