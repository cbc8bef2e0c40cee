"""Overhead of recording: engine throughput with kvscope vs without, interleaved repeats.

    python bench/bench_overhead.py MODEL_DIR [--repeats 3] [workload args...]

Runs ``tests/support/workload.py --engine llm`` (vLLM's offline path, stats off by default: the worst case,
since kvscope turns per-step stats on) alternately plain and under ``kvscope record``, and prints
the throughput ratio (with / without) from this one run, plus coverage and storage numbers.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(model: str, extra: list[str], session: Path | None, out_dir: Path) -> dict:
    """One workload run; returns its counts (generate_s, output_tokens, ...)."""
    counts = out_dir / f"counts-{os.getpid()}-{len(list(out_dir.iterdir()))}.json"
    cmd = [sys.executable, str(ROOT / "tests" / "support" / "workload.py"), model, "--engine", "llm",
           "--counts", str(counts), *extra]
    if session is not None:
        cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(session), "--", *cmd]
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return json.loads(counts.read_text())


def main() -> int:
    """Interleave plain and recorded runs and print the ratios."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    a, extra = ap.parse_known_args()
    extra = extra or ["--blocks", "24", "--requests", "128", "--prefixes", "2", "--max-tokens", "64"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plain, recorded, sessions = [], [], []
        for i in range(a.repeats):
            p = run_once(a.model, extra, None, out)
            s_path = out / f"rec{i}.kvscope"
            r = run_once(a.model, extra, s_path, out)
            plain.append(p["output_tokens"] / p["generate_s"])
            recorded.append(r["output_tokens"] / r["generate_s"])
            sessions.append(s_path)
            print(f"repeat {i}: plain {plain[-1]:.1f} tok/s, recorded {recorded[-1]:.1f} tok/s",
                  flush=True)
        conn = sqlite3.connect(sessions[-1])
        steps = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
        steps_bytes = conn.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = 'steps'").fetchone()[0]
        file_bytes = sessions[-1].stat().st_size
    pairs = [r / p for r, p in zip(recorded, plain, strict=True)]
    result = {
        "throughput_ratio": statistics.median(recorded) / statistics.median(plain),
        "pair_ratios": pairs,
        "pair_ratio_median": statistics.median(pairs),
        "plain_tok_s_median": statistics.median(plain),
        "recorded_tok_s_median": statistics.median(recorded),
        "steps_recorded": steps,
        "steps_table_bytes_per_step": steps_bytes / steps if steps else None,
        "file_bytes_per_step": file_bytes / steps if steps else None,
    }
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
