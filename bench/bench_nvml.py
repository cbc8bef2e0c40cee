"""NVML sampler cost: achieved sampling rate and CPU time per second of wall time.

    python bench/bench_nvml.py [--interval-ms 20] [--duration-s 10]

Runs kvscope's real NVML sampler thread into a throw-away session while the main thread sleeps,
and prints the achieved rate (Hz) and the process's CPU use as a fraction of one core.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    """Sample for the given duration and print rate and CPU cost."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-ms", type=float, default=20.0)
    ap.add_argument("--duration-s", type=float, default=10.0)
    a = ap.parse_args()
    from profiler import nvml
    from profiler.writer import SessionWriter

    with tempfile.TemporaryDirectory() as tmp:
        w = SessionWriter(Path(tmp) / "nvml.kvscope")
        if not nvml.start_nvml_sampler(w, a.interval_ms / 1000):
            print("NVML unavailable on this machine; nothing to measure")
            return 1
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(a.duration_s)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        nvml.stop_nvml_sampler()
        w.close()
        rows = nvml.stats.samples
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    result = {
        "interval_ms": a.interval_ms,
        "achieved_hz": rows / (t1 - t0),
        "cpu_frac_of_one_core": cpu_s / (t1 - t0),
        "query_ms_mean": 1000 * nvml.stats.busy_s / max(rows, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
