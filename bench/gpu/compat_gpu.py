"""The compatibility matrix's checks on the lent GPU, for the vLLM release on PYTHONPATH.

    python bench/gpu/compat_gpu.py MODEL_DIR WORK_DIR [--json OUT.json]

The same checks as ``make compat`` (tests/support/compat.py) with the same real work, scaled to
the GPU's 16-token KV blocks (the CPU engine's are 128): ``kvscope record`` over the pressure
workload (64 requests into 192 blocks = 3,072 tokens, as 24 blocks of 128 on the CPU), every count
of ``kvscope report --json`` against an independent StatLoggerBase of the same run, the diagnosis,
then ``kvscope attach`` (KV events on a concrete endpoint, or ``auto`` where the server offers
``/kv_event_sources``) on that release's own OpenAI server under load, its counters against the
server's own deltas. Model: Llama-3-8B shapes with dummy weights (bench/gpu_model.py); the recorded
run uses vLLM's defaults (torch.compile, CUDA graphs), the attached server runs eager.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import compat  # noqa: E402

GPU_BLOCKS = 192
"""KV blocks of 16 tokens: the CPU matrix's 24 blocks of 128."""
GPU_PRESSURE = ("--load-format", "dummy", "--blocks", str(GPU_BLOCKS), "--requests", "64",
                "--prefixes", "2", "--prefix-len", "600", "--max-tokens", "48")
SERVER_EXTRA = ("--load-format", "dummy", "--enforce-eager")
CHECKS = ("record", "own_counts", "report", "diagnosis", "attach", "kv_events")
"""The cells run here (the CPU matrix's spec-decode and KV-group cells run a tiny Gemma-2 with
n-gram drafts; on the GPU those features have runs of their own: bench/gpu_configs.py)."""


def main(argv: list[str] | None = None) -> int:
    """Run both checks; print and write the row."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("work")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", choices=["record", "counts", "attach"], default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    version = importlib.metadata.version("vllm")
    row = {"version": version, "date": dt.date.today().isoformat(), "device": "H200"}
    checks = []
    if a.only in (None, "record"):
        checks.append(lambda: compat.check_record(sys.executable, a.model, work, version,
                                                  pressure=GPU_PRESSURE))
    if a.only in (None, "counts"):
        checks.append(lambda: compat.check_own_counts(sys.executable, a.model, work, version,
                                                      pressure=GPU_PRESSURE))
    if a.only in (None, "attach"):
        checks.append(lambda: compat.check_attach(sys.executable, a.model, work, version,
                                                  server_blocks=GPU_BLOCKS, server_extra=SERVER_EXTRA))
    for check in checks:
        try:
            row |= check()
        except Exception as exc:  # a broken version is a row of the table, not a crash
            row |= {k: f"{type(exc).__name__}: {str(exc)[:300]}" for k in CHECKS if k not in row}
        print("COMPAT_PROGRESS", json.dumps(row, ensure_ascii=False), flush=True)
    print("COMPAT_ROW", json.dumps(row, ensure_ascii=False), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
