"""Day-long sessions: what opening a 10M-step session costs once its summaries are stored.

    PYTHONPATH=. python bench/bench_day.py [--steps 10000000] [--session PATH] [--repeats 5]
                                           [--dashboard] [--writer-steps 2000000]

1. Builds a session of ``--steps`` real recorded steps (tests/support/big_session.py: the bundled
   ``kv_saturation`` session's rows replicated back to back), or reuses ``--session``. Built by
   plain inserts, it has no summaries: it is an "older session".
2. ``kvscope report --json`` once: the one-time summary build (rollups, value checks, report and
   findings stored in the file), timed.
3. ``kvscope report --json`` ``--repeats`` times (a fresh process each: imports included): median
   and spread (goal ≤ 1 s).
4. Storage: bytes per step of ``steps`` (pages, index included) and of the summaries (dbstat).
5. With ``--dashboard``: ``kvscope ui`` start-up, first chart on Overview and Timeline (fresh server
   and browser page each time), and eight zooms (bench/bench_dashboard.py's measurements).
6. With ``--writer-steps N``: a SessionWriter appends N real steps in 10 ms-step batches as fast as
   it can, the way the recorder does (summaries folded per flush); its RSS every tenth: memory
   must stay flat.

The machine is shared with other agents: every time is printed with its spread and the load.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.big_session import build_big_session  # noqa: E402

SOURCE = ROOT / "sessions" / "kv_saturation.kvscope"


def kvscope_report(path: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "profiler.cli", "report", "--json", str(path)],
                       cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return time.perf_counter() - t0, r.stderr


def storage(path: Path, steps: int) -> dict[str, float]:
    from profiler.session import summaries as sm

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        sizes = dict(c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    summary = sum(v for k, v in sizes.items() if k.startswith(sm.SUMMARY_TABLES)
                  or k.startswith("sqlite_autoindex_kvscope"))
    return {"steps_bytes_per_step": sizes.get("steps", 0) / steps,
            "summaries_bytes_per_step": summary / steps,
            "file_bytes_per_step": path.stat().st_size / steps}


def writer_memory(n: int, folder: Path) -> list[tuple[int, float]]:
    """(steps written, RSS MiB) every tenth of ``n`` steps appended through a SessionWriter."""
    import psutil

    from profiler.session.reader import open_session
    from profiler.session.writer import SessionWriter

    with open_session(SOURCE) as src:
        rows = src.conn.execute("SELECT * FROM steps ORDER BY rowid").fetchall()
    period = rows[-1][1] - rows[0][1] + 0.01
    w = SessionWriter(folder / "writer.kvscope", flush_interval_s=0.25)
    proc = psutil.Process()
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        w.append("steps", (r[0], r[1] + (i // len(rows)) * period, *r[2:]))
        if i % 1000 == 999:
            time.sleep(0.002)  # let the flush thread keep up, as a recorder's steps leave time
        if i % (n // 10) == n // 10 - 1:
            w.flush()
            out.append((i + 1, proc.memory_info().rss / 2**20))
    w.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000_000)
    ap.add_argument("--session", type=Path, default=None, help="reuse (or keep) this session")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dashboard", action="store_true")
    ap.add_argument("--writer-steps", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kvscope-day-"))
    path = a.session or tmp / "day.kvscope"
    if not path.exists():
        t = time.perf_counter()
        n = build_big_session(SOURCE, path, a.steps)
        print(f"built {path}: {n:,} steps, {path.stat().st_size / 2**20:,.0f} MiB in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        n = c.execute("SELECT MAX(rowid) FROM steps").fetchone()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    once, err = kvscope_report(path)
    print(f"first `kvscope report --json` (one-time summary build, stored): {once:.1f} s",
          flush=True)
    print("  " + err.strip().replace("\n", "\n  "), flush=True)
    times = [kvscope_report(path)[0] for _ in range(a.repeats)]
    print(f"`kvscope report --json` on {n:,} steps: median {statistics.median(times):.2f} s, "
          f"{min(times):.2f}-{max(times):.2f} s over {len(times)} runs (goal ≤ 1 s); "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    st = storage(path, n)
    print(f"storage: steps {st['steps_bytes_per_step']:.1f} B/step, summaries "
          f"{st['summaries_bytes_per_step']:.2f} B/step, whole file {st['file_bytes_per_step']:.1f} "
          "B/step (its other tables: replicated requests and prompt blocks)", flush=True)
    result = {"steps": n, "first_report_s": once, "report_s": times, **st}
    if a.dashboard:
        import bench.bench_dashboard as bd

        res = bd.measure({f"day ({n:,} steps)": path}, path, repeats=3)
        for key, cold in res.items():
            if key == "zoom":
                continue
            print(f"{key}: " + ", ".join(f"{x:.2f} s" for x in cold), flush=True)
        vis = [v for v, _ in res["zoom"]]
        ref = [r for _, r in res["zoom"]]
        print(f"zoom brush: median {statistics.median(vis):.3f} s ({min(vis):.3f}-{max(vis):.3f}); "
              f"release -> data drawn: median {statistics.median(ref):.3f} s "
              f"({min(ref):.3f}-{max(ref):.3f})", flush=True)
        result["dashboard"] = {str(k): v for k, v in res.items()}
    if a.writer_steps:
        mem = writer_memory(a.writer_steps, tmp)
        print("writer RSS (steps, MiB): " + ", ".join(f"{s:,}: {m:.0f}" for s, m in mem), flush=True)
        result["writer_rss_mib"] = mem
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
