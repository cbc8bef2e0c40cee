"""Crash safety of the session writer: ``kill -9`` a writing process N times.

    python bench/bench_kill9.py [--runs 30]

Each run spawns a process appending a step every millisecond, kills it with SIGKILL once it has
committed rows, and opens the file: prints how many opened, how many committed rows were lost
(must be 0) and the seconds of data lost before the kill (the last flush; goal ≤ 2 × 0.25 s).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.errors import KvscopeError  # noqa: E402
from profiler.session.reader import open_session  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402
from tests.support.writers import committed_steps, write_steps_until_killed  # noqa: E402


def main() -> int:
    """Run the kills and print the result."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    opened, lost_rows, lost_s = 0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            path = str(Path(tmp) / f"kill{i}.kvscope")
            p = mp.get_context("spawn").Process(target=write_steps_until_killed, args=(path,))
            p.start()
            wait_until(lambda path=path: committed_steps(path) > 200, 60, "committed rows")
            time.sleep(random.uniform(0, 0.5))  # kill at any point of the flush cycle
            seen = committed_steps(path)
            killed_at = time.time()
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            try:
                s = open_session(path)
                n, last = s.rows("SELECT COUNT(*), MAX(t_unix_s) FROM steps")[0]
                s.close()
            except KvscopeError as exc:
                print(f"run {i}: did not open: {exc}")
                continue
            opened += 1
            lost_rows += max(seen - n, 0)
            lost_s.append(killed_at - last)
    print(f"{opened}/{a.runs} sessions opened after kill -9; committed rows lost: {lost_rows}; "
          f"data lost before the kill: median {statistics.median(lost_s):.3f} s, "
          f"max {max(lost_s):.3f} s (goal <= 0.5 s)")
    return 0 if opened == a.runs and lost_rows == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
