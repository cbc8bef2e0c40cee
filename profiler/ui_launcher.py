"""Start the Streamlit dashboard as a subprocess (collection code never imports Streamlit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DASHBOARD_APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def launch(sessions: list[str], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Run ``streamlit run dashboard/app.py`` bound to ``host:port`` on ``sessions``."""
    env = dict(os.environ)
    env["KVSCOPE_UI_SESSIONS"] = os.pathsep.join(str(Path(s).resolve()) for s in sessions)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    return subprocess.call(cmd, env=env)
