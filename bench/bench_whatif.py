"""What-if accuracy: record the thrash workload at one KV size, predict 0.5×/1×/2×, then really run them.

    python bench/bench_whatif.py [--blocks 24] [--also N ...] [--model DIR] [--out DIR]

Prints predicted vs measured prefix-cache hit rate at each size and the absolute error in
percentage points (target ≤ 5), plus the replay time of the one-pass model. Every run is a real
vLLM CPU engine under the shared engine lock.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler.analysis.whatif import analyse, session_point  # noqa: E402
from profiler.session.reader import open_session  # noqa: E402
from tests.support.scenarios import THRASH, record  # noqa: E402
from tests.support.tinymodel import build_tiny_llama  # noqa: E402


def _run(blocks: int, out: Path, model: Path) -> Path:
    s = THRASH.with_blocks(blocks)
    path = out / f"{s.name}.kvscope"
    proc = record(s, path, model)
    if proc.returncode != 0:
        raise SystemExit(f"run at {blocks} blocks failed:\n{proc.stderr[-2000:]}")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=THRASH.blocks, help="recorded size (1×)")
    ap.add_argument("--also", type=int, nargs="*", default=[],
                    help="more sizes to run (e.g. on the curve's slope, where errors show)")
    ap.add_argument("--model", type=Path, default=None, help="tiny model dir (built if absent)")
    ap.add_argument("--out", type=Path, default=None, help="keep the sessions here")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="kvscope-whatif-"))
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(a.model or out / "tiny-llama")
    base = a.blocks
    sizes = sorted({max(base // 2, 2), base, base * 2, *a.also})
    print(f"workload: {THRASH.requests} requests over {THRASH.prefixes} prefixes of "
          f"~{THRASH.prefix_len_tokens} tokens, {THRASH.concurrency} clients, order {THRASH.order}")
    recorded = _run(base, out, model)
    session = open_session(recorded)
    t = time.perf_counter()
    w = analyse(session)
    replay_s = time.perf_counter() - t
    print(f"recorded at {base} blocks: {len(w.trace.requests)} requests, {w.trace.accesses} block "
          f"accesses, replay {replay_s * 1000:.1f} ms; unbounded-cache hit rate {w.curve.max_hit_rate:.1%}")
    rows = []
    for n in sizes:
        path = recorded if n == base else _run(n, out, model)
        s = open_session(path)
        eid = int(s.scalar("SELECT MIN(engine_id) FROM engines"))
        measured = session_point(s, eid).hit_rate
        predicted = w.curve.hit_rate(n)
        rows.append((n, predicted, measured))
    print(f"\n{'blocks':>7} {'x':>5} {'predicted':>10} {'measured':>9} {'abs err (pts)':>14}")
    worst = 0.0
    for n, p, m in rows:
        err = abs(p - m) * 100 if p is not None and m is not None else float("nan")
        worst = max(worst, err)
        print(f"{n:>7} {n / base:>5.1f} {p:>10.1%} {m:>9.1%} {err:>14.1f}")
    print(f"\nmax absolute error {worst:.1f} points (target ≤ 5): {'MET' if worst <= 5 else 'MISSED'}")
    print(f"sessions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
