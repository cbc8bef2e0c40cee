"""Data parallelism over two node ranks on one host: vLLM's multi-node DP launch, each node under
its own ``kvscope record`` writing a shard into one shared session folder.

Node 0 runs the API server with DP rank 0's engine core (``--data-parallel-size 2
--data-parallel-size-local 1``), node 1 runs ``vllm serve --headless --data-parallel-start-rank 1``:
DP rank 1's engine core, which has no frontend of its own on that node. The load goes to node 0's
API server, which balances it over both ranks. When it is done, both nodes are stopped with SIGTERM
(what an operator does), the head first.

    python -m tests.support.multinode_dp FOLDER [--gpus 0,1 --blocks 2000]

``--gpus``: one GPU per node (``CUDA_VISIBLE_DEVICES``; the lent 2-GPU machine, bench/gpu/batch.sh's
``multinode`` task), ``--blocks``: the KV blocks of each rank (24 of 128 tokens on the CPU engine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import server as srv
from tests.support.engine import KVSCOPE, ROOT, engine_lock
from tests.support.multinode import gpu_env, stop_node
from tests.support.ports import free_port
from tests.support.tinymodel import build_tiny_llama

BLOCKS = 24


def _dp_args(rpc_port: int) -> tuple[str, ...]:
    return ("--data-parallel-size", "2", "--data-parallel-size-local", "1",
            "--data-parallel-address", "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port))


def record_dp_two_nodes(folder: Path, model_dir: Path, waves: int = 2, per_wave: int = 16,
                        gpus: tuple[str, str] | None = None, blocks: int = BLOCKS) -> dict[str, Any]:
    """Record DP=2 over two node ranks into the folder session ``folder``; returns the HTTP codes,
    the server's own per-engine counter deltas and the headless node's output. ``gpus``: each
    node's ``CUDA_VISIBLE_DEVICES``."""
    model = str(build_tiny_llama(model_dir))
    rpc_port = free_port()
    session = str(folder) + "/"
    log_dir = folder.parent
    node1_log = log_dir / f"{folder.name}.node1.log"
    node1 = subprocess.Popen(
        [*KVSCOPE, "record", "--session", session, "--", sys.executable, "-m",
         "tests.support.vllm_cli", "serve", model, "--headless", *_dp_args(rpc_port),
         "--data-parallel-start-rank", "1", "--max-model-len", "2048", "--max-num-seqs", "16",
         "--num-gpu-blocks-override", str(blocks), "--enable-prefix-caching", *_eager(gpus)],
        cwd=ROOT, env={**srv.server_env(), **gpu_env(gpus, 1)}, stdout=node1_log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    out: dict[str, Any] = {}
    try:
        with srv.running_server(sys.executable, model, log_dir, blocks=blocks,
                                extra=(*_dp_args(rpc_port), *_eager(gpus)), env=gpu_env(gpus, 0),
                                wrapper=(*KVSCOPE, "record", "--session", session, "--")) as s:
            before = srv.engine_counters(s.url)
            out["codes"] = srv.drive(s.url, model, waves=waves, per_wave=per_wave, max_tokens=32)
            srv.wait_idle(s.url)
            after = srv.engine_counters(s.url)
            out["server"] = {int(e): {c: after[e][c] - before.get(e, {}).get(c, 0.0)
                                      for c in srv.COUNTERS} for e in after}
            out["node0_log"] = str(s.log)
        # the head is stopped first (leaving the block stops it): stopping the headless node
        # while the head runs is a DP rank lost to the head's frontend (an EngineDeadError)
    finally:
        stop_node(node1)
    out["node1_rc"] = node1.returncode
    out["node1_log"] = str(node1_log)
    return out


def _eager(gpus: tuple[str, str] | None) -> tuple[str, ...]:
    return ("--enforce-eager",) if gpus else ()  # no CUDA graph capture: a shorter start


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--gpus", default=None, help="each node's CUDA_VISIBLE_DEVICES: 0,1")
    ap.add_argument("--blocks", type=int, default=BLOCKS)
    a = ap.parse_args(argv)
    folder = Path(a.folder).resolve()
    gpus = tuple(a.gpus.split(",")) if a.gpus else None
    t0 = time.monotonic()
    with engine_lock():
        out = record_dp_two_nodes(folder, folder.parent / "tiny-llama", gpus=gpus,  # type: ignore[arg-type]
                                  blocks=a.blocks)
    print(json.dumps(out, default=str), f"{time.monotonic() - t0:.0f} s")
    return 0 if out.get("codes") and set(out["codes"]) == {200} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
