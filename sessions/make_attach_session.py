"""Regenerate the bundled attach session from a real vLLM CPU server.

    python sessions/make_attach_session.py [--out DIR]

Starts ``python -m vllm.entrypoints.openai.api_server`` on the tiny test model (24 KV blocks of
128 tokens, prefix caching, KV events), attaches ``kvscope attach --kv-events auto`` at 4 Hz, and
streams four waves of 12 requests over four ~600-token prefixes, one second apart: the cache
overflows (preemptions, evictions, re-stores) and the server's latency histograms fill. The file is
then checkpointed out of WAL mode like the recorded sessions (``make_sessions.finalize``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

NAME = "attach_pressure"


def main() -> int:
    """Record ``sessions/attach_pressure.kvscope``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args()
    from sessions.make_sessions import finalize
    from tests.support import server as srv
    from tests.support.engine import KVSCOPE, engine_lock
    from tests.support.ports import free_port
    from tests.support.tinymodel import build_tiny_llama

    out = Path(a.out) / f"{NAME}.kvscope"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    model = str(build_tiny_llama(Path(tempfile.gettempdir()) / "kvscope-tiny-llama"))
    cfg = srv.kv_events_config(f"tcp://*:{free_port()}", f"tcp://*:{free_port()}")
    with engine_lock(), tempfile.TemporaryDirectory() as logs, srv.running_server(
            sys.executable, model, Path(logs), blocks=24, extra=("--kv-events-config", cfg)) as s:
        attach = subprocess.Popen([*KVSCOPE, "attach", s.url, "--session", str(out),
                                   "--interval-s", "0.25", "--kv-events", "auto"], cwd=ROOT)
        deadline = time.monotonic() + 60
        while not out.exists() or not _started(out):
            if attach.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("kvscope attach did not start")
            time.sleep(0.2)
        time.sleep(2.0)  # an idle start: the page shows the load arriving
        timed = srv.drive_streaming(s.url, s.model, waves=4, per_wave=12, prefixes=4,
                                    max_tokens=32, gap_s=1.0)
        srv.wait_idle(s.url)
        time.sleep(2.0)  # the last scrapes of the drained server
        attach.send_signal(signal.SIGINT)
        if attach.wait(60) != 0:
            raise SystemExit(f"kvscope attach exited with {attach.returncode}")
    finalize(out)
    ttft = sorted(t.ttft_s for t in timed if t.ttft_s is not None)
    print(json.dumps({"session": str(out), "requests": len(timed),
                      "client_ttft_p50_s": ttft[len(ttft) // 2]}))
    return 0


def _started(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
            return c.execute("SELECT 1 FROM events WHERE kind = 'attach_start'").fetchone() is not None
    except sqlite3.Error:
        return False


if __name__ == "__main__":
    sys.exit(main())
