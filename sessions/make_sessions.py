"""Regenerate the bundled sample sessions from the real vLLM CPU engine.

    python sessions/make_sessions.py [--only NAME ...]

Each scenario runs ``tests/support/workload.py`` under ``kvscope record`` on the tiny test model, then the
file is checkpointed out of WAL mode and vacuumed so it opens from a read-only folder.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SCENARIOS: dict[str, list[str]] = {
    # Plenty of KV blocks, two shared system prompts, steady arrivals: nothing should alarm.
    "healthy": ["--blocks", "96", "--requests", "96", "--prefixes", "2", "--prefix-len", "600",
                "--max-tokens", "48", "--arrivals-per-step", "2"],
    # 20 blocks for long prompts arriving fast: KV at the ceiling, requests waiting, preemptions.
    "kv_saturation": ["--blocks", "20", "--max-model-len", "1024", "--requests", "128", "--prefixes", "4", "--prefix-len", "700",
                      "--max-tokens", "96", "--max-num-seqs", "64", "--arrivals-per-step", "4"],
    # 16 distinct 1 KiB prefixes (8 blocks each) cycling through 40 blocks: cached prefixes are
    # evicted before they recur, so the hit rate collapses.
    "prefix_thrash": ["--blocks", "40", "--requests", "160", "--prefixes", "16", "--prefix-len", "1024",
                      "--max-tokens", "16", "--max-num-seqs", "8", "--arrivals-per-step", "1"],
    # issue 13, recorded with in-process KV events and residency sampling: every preemption with
    # what it discarded, token occupancy, evictions (KV events page and Tiers' residency check).
    "kv_forensics": ["--blocks", "24", "--requests", "48", "--prefixes", "2", "--prefix-len", "600",
                     "--max-tokens", "48"],
    # two 100-token shared prefixes in 128-token blocks: queried, never hit (PREFIX_BELOW_BLOCK).
    "prefix_below_block": ["--blocks", "16", "--requests", "32", "--prefixes", "2", "--prefix-len",
                           "100", "--max-tokens", "16", "--max-model-len", "512",
                           "--arrivals-per-step", "1"],
    # a real tier behind the GPU cache on the CPU engine: vLLM's ExampleConnector (KV files on
    # disk) under ten prefixes cycling through 24 blocks (the Tiers page).
    "disk_tier": ["--blocks", "24", "--requests", "60", "--prefixes", "10", "--prefix-len", "520",
                  "--max-tokens", "32", "--max-model-len", "1024", "--max-num-seqs", "2",
                  "--arrivals-per-step", "1"],
    # n-gram speculative decoding (3 tokens per draft): 48 short prompts (~100 tokens), drained,
    # then 48 long ones (~1,500 tokens), so acceptance on short vs long prompts can be told apart.
    "spec_ngram": ["--blocks", "96", "--requests", "48", "--prefixes", "4", "--prefix-len", "100",
                   "--then-prefix-len", "1500", "--max-tokens", "64", "--max-num-seqs", "16",
                   "--arrivals-per-step", "2", "--spec-ngram", "3"],
    # the same work without speculation: Compare against spec_ngram shows what it changed.
    "spec_ngram_off": ["--blocks", "96", "--requests", "48", "--prefixes", "4", "--prefix-len", "100",
                       "--then-prefix-len", "1500", "--max-tokens", "64", "--max-num-seqs", "16",
                       "--arrivals-per-step", "2"],
    # a Gemma-2 with a sliding-window layer beside a full-attention layer: two KV-cache groups
    # sharing 40 blocks, ~1,000-token prompts (the window is 256 tokens), preemptions.
    "sliding_window": ["--blocks", "40", "--max-model-len", "2048", "--requests", "48",
                       "--prefixes", "3", "--prefix-len", "1000", "--max-tokens", "48",
                       "--max-num-seqs", "16", "--arrivals-per-step", "2"],
}
RECORD_ARGS: dict[str, list[str]] = {"kv_forensics": ["--kv-events", "--kv-cache-metrics"]}
"""``kvscope record`` options per scenario (default none)."""


def engine_args(name: str, work_dir: Path) -> list[str]:
    """``--engine-args`` of a scenario that needs a path of this run (the disk tier's store)."""
    if name != "disk_tier":
        return []
    cfg = {"kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                                  "kv_connector_extra_config": {
                                      "shared_storage_path": str(work_dir / "disk-tier-store")}}}
    return ["--engine-args", json.dumps(cfg)]

MODELS: dict[str, str] = {"sliding_window": "gemma2"}
"""Scenarios on another tiny model than the Llama (``tests/support/tinymodel.py``)."""


def finalize(path: Path) -> None:
    """Fold the WAL into the main file and drop WAL mode, so readers need no write access."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("VACUUM")
    conn.close()


def model_for(name: str, base: Path) -> Path:
    """The tiny model a scenario runs on (built once under ``base``)."""
    from tests.support.tinymodel import build_tiny_gemma2, build_tiny_llama

    if MODELS.get(name) == "gemma2":
        return build_tiny_gemma2(base / "kvscope-tiny-gemma2")
    return build_tiny_llama(base / "kvscope-tiny-llama")


def record(name: str, model_dir: Path, out_dir: Path) -> Path:
    """Record one scenario into ``out_dir/NAME.kvscope``."""
    out = out_dir / f"{name}.kvscope"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    work = Path(tempfile.mkdtemp(prefix=f"kvscope-{name}-"))
    cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(out),
           *RECORD_ARGS.get(name, []), "--", sys.executable,
           str(ROOT / "tests" / "support" / "workload.py"), str(model_dir), *SCENARIOS[name],
           *engine_args(name, work)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    finalize(out)
    return out


def main() -> int:
    """Record every scenario (or ``--only`` one) into sessions/."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", choices=sorted(SCENARIOS),
                    help="record these (the others' files are left as they are)")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args()
    for name in a.only or list(SCENARIOS):
        model_dir = model_for(name, Path(tempfile.gettempdir()))
        print("recorded", record(name, model_dir, Path(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
