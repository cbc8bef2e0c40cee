"""Coverage under load: steps kvscope recorded / steps vLLM reported to its own stat loggers.

    python bench/bench_coverage.py MODEL_DIR [workload args...]
    python bench/bench_coverage.py --session S.kvscope --counts C.json   # an existing GPU run

Runs ``tests/support/workload.py --engine llmengine`` under ``kvscope record`` with an independent
StatLoggerBase counting in the same process, and prints recorded/engine ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ratios(session: Path, counts: dict) -> dict:
    """Recorded / engine-counted for steps, preemptions, prefix hits and finished requests."""
    c = sqlite3.connect(session)
    steps, pre, hits = c.execute(
        "SELECT COUNT(running), SUM(preemptions), SUM(prefix_hits_tokens) FROM steps").fetchone()
    fin = c.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    return {
        "steps_ratio": steps / counts["steps"],
        "preemptions": [pre, counts["preemptions"]],
        "prefix_hits_ratio": hits / counts["prefix_hits"] if counts["prefix_hits"] else None,
        "finished_ratio": fin / counts["finished"],
        "engine_steps": counts["steps"],
    }


def main() -> int:
    """Record one loaded run (or read a given one) and print the coverage ratios."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--session")
    ap.add_argument("--counts")
    a, extra = ap.parse_known_args()
    if a.session and a.counts:
        print(json.dumps(ratios(Path(a.session), json.loads(Path(a.counts).read_text())), indent=2))
        return 0
    extra = extra or ["--blocks", "24", "--requests", "256", "--prefixes", "4", "--max-tokens", "64"]
    with tempfile.TemporaryDirectory() as tmp:
        session, counts = Path(tmp) / "cov.kvscope", Path(tmp) / "counts.json"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        subprocess.run([sys.executable, "-m", "profiler.cli", "record", "--session", str(session),
                        "--", sys.executable, str(ROOT / "tests" / "support" / "workload.py"), a.model,
                        "--engine", "llmengine", "--counts", str(counts), *extra],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print(json.dumps(ratios(session, json.loads(counts.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
