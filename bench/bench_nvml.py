"""NVML sampler cost: achieved sampling rate and CPU time per second of wall time.

    python bench/bench_nvml.py [--interval-ms 20] [--duration-s 10]

Runs kvscope's real NVML sampler thread into a throw-away session while the main thread sleeps,
and prints the achieved rate (Hz) and the process's CPU use as a fraction of one core.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HOLDER = """
import sys, time, torch
x = torch.empty(2**30, dtype=torch.uint8, device=f"cuda:{sys.argv[1]}")
print("READY", flush=True)
time.sleep(600)
"""


def _device_count() -> int:
    import pynvml

    pynvml.nvmlInit()
    return int(pynvml.nvmlDeviceGetCount())


def _start_holders(per_gpu: int) -> list[subprocess.Popen[str]]:
    holders = []
    for dev in range(_device_count() if per_gpu else 0):
        for _ in range(per_gpu):
            p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(dev)], stdout=subprocess.PIPE,
                                 text=True)
            holders.append(p)
    for p in holders:
        assert p.stdout is not None and "READY" in p.stdout.readline()
    return holders


def main() -> int:
    """Sample for the given duration and print rate and CPU cost."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-ms", type=float, default=20.0)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--gpu-processes", type=int, default=0,
                    help="start this many torch processes per GPU holding 1 GiB each, so NVML has "
                         "processes to list (use when no engine is running)")
    a = ap.parse_args()
    holders = _start_holders(a.gpu_processes)
    from profiler.recorder import nvml
    from profiler.session.writer import SessionWriter

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
    for h in holders:
        h.kill()
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    result = {
        "interval_ms": a.interval_ms,
        "achieved_hz": rows / (t1 - t0),
        "cpu_frac_of_one_core": cpu_s / (t1 - t0),
        "query_ms_mean": 1000 * nvml.stats.busy_s / max(rows, 1),
        "process_list_hz": nvml.stats.process_rounds / (t1 - t0),
        "devices": _device_count(),
        "holder_processes": len(holders),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
