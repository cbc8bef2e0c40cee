"""A multi-node engine on one host: vLLM's multiprocessing launch with two node ranks, each rank
under its own ``kvscope record`` writing a shard into one shared session folder.

Node 0 runs ``tests/support/workload.py`` (``LLM``, TP=2 over ``--nnodes 2``: its worker is rank
0), node 1 runs ``vllm serve --headless --node-rank 1`` (the worker of rank 1, no engine of its
own). When node 0's program is done, node 1 is stopped with SIGTERM (what an operator does).

    python -m tests.support.multinode FOLDER [--gpus 0,1 --blocks 2000] [--plain]

``--gpus``: one GPU per node (``CUDA_VISIBLE_DEVICES``; the lent 2-GPU machine, bench/gpu/batch.sh's
``multinode`` task; ``0,1/1,0``: every node sees both GPUs, its own first), ``--blocks``: the KV blocks (24 of 128 tokens on the CPU engine), ``--plain``:
the same two nodes without kvscope (is a hang vLLM's or kvscope's?). When node 0 runs past its
time, every process of both nodes prints its Python stacks into the node logs (faulthandler on
SIGABRT) before it is killed.

With ``--gpus`` both nodes run with vLLM's custom all-reduce off, as on two real hosts: vLLM sees
both node ranks on one machine and would set up its same-node all-reduce over CUDA IPC, which a
process that sees only its own GPU cannot open (on separate hosts vLLM turns it off itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.engine import KVSCOPE, ROOT, WORKLOAD, engine_env, engine_lock
from tests.support.ports import free_port
from tests.support.tinymodel import build_tiny_llama

BLOCKS = 24
REQUESTS = 16
MAX_TOKENS = 16
SCHEDULER = {"max_num_seqs": 32, "max_num_batched_tokens": 2048, "max_model_len": 2048}
"""Given to both nodes alike: every node rank builds its own engine configuration from its own
arguments, and vLLM's defaults differ between ``LLMEngine`` and ``vllm serve`` (and by device),
so ranks left to their defaults profile different batch shapes and their collectives stop
matching (on the GPU: NCCL "message truncated: receiving 131072 bytes instead of 16384", or a
hang over P2P)."""


def record_two_nodes(folder: Path, model_dir: Path, timeout_s: float = 300.0,
                     gpus: tuple[str, str] | None = None, blocks: int = BLOCKS,
                     plain: bool = False) -> dict[str, Any]:
    """Record a TP=2 engine spread over two node ranks into the folder session ``folder``;
    returns the workload's counts (its independent stat logger) and both processes' outputs.
    ``gpus``: each node's ``CUDA_VISIBLE_DEVICES``; ``plain``: run both nodes without kvscope."""
    model = build_tiny_llama(model_dir)
    port = free_port()
    common: dict[str, Any] = {"nnodes": 2, "master_addr": "127.0.0.1", "master_port": port,
                              "distributed_executor_backend": "mp"}
    own_gpu = ["--disable-custom-all-reduce"] if gpus else []  # see the module's docstring
    if gpus:
        common["disable_custom_all_reduce"] = True
    counts = folder.parent / f"{folder.name}.counts.json"
    recorder = [] if plain else [*KVSCOPE, "record", "--session", str(folder) + "/", "--"]
    env = engine_env(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    node_env = [{**env, **gpu_env(gpus, n)} for n in (0, 1)]
    logs = [folder.parent / f"{folder.name}.node{n}.log" for n in (0, 1)]  # written as they run
    node1 = subprocess.Popen(
        [*recorder, sys.executable, "-m", "tests.support.vllm_cli", "serve", str(model), "--headless",
         "--tensor-parallel-size", "2", "--nnodes", "2", "--node-rank", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(port),
         "--distributed-executor-backend", "mp",
         *(f"--{k.replace('_', '-')}={v}" for k, v in SCHEDULER.items()),
         "--num-gpu-blocks-override", str(blocks), "--enforce-eager", *own_gpu],
        cwd=ROOT, env=node_env[1], stdout=logs[1].open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        node0 = _run_group(
            [*recorder, sys.executable, str(WORKLOAD),
             str(model), "--engine", "llmengine", "--tp", "2", "--blocks", str(blocks),
             "--requests", str(REQUESTS), "--max-tokens", str(MAX_TOKENS), "--prefixes", "2",
             "--prefix-len", "300", "--counts", str(counts), "--enforce-eager",
             "--engine-args", json.dumps({**common, **SCHEDULER, "node_rank": 0})],
            node_env[0], timeout_s, logs[0], also_dump=node1)
    finally:
        stop_node(node1)
    return {"node0_rc": node0, "node1_rc": node1.returncode,
            "node0_out": logs[0].read_text(errors="replace"),
            "node1_out": logs[1].read_text(errors="replace"),
            "counts": json.loads(counts.read_text()) if counts.exists() else None}


def gpu_env(gpus: tuple[str, str] | None, node: int) -> dict[str, str]:
    """Node ``node``'s ``CUDA_VISIBLE_DEVICES`` (one GPU per node rank), or nothing on the CPU."""
    return {"CUDA_VISIBLE_DEVICES": gpus[node]} if gpus else {}


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """Stop a node's ``kvscope record`` with SIGTERM (the recorder forwards it to the node's vLLM),
    as an operator would; its whole process group is killed if it has not exited in 60 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _run_group(cmd: list[str], env: dict[str, str], timeout_s: float, log: Path,
               also_dump: subprocess.Popen[bytes]) -> int:
    """Run ``cmd`` in its own process group, its output into ``log``; on timeout every process of
    its group and of ``also_dump``'s prints its stacks (SIGABRT, faulthandler), then the group
    (engine core and workers included) is killed. Returns its exit code (-9 when killed)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        for group in (proc.pid, also_dump.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)  # the group leader aborts after its dump; the rest are killed below
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--gpus", default=None,
                    help="each node's CUDA_VISIBLE_DEVICES: 0,1 (one GPU each) or 0,1/1,0 (per node)")
    ap.add_argument("--blocks", type=int, default=BLOCKS)
    ap.add_argument("--timeout-s", type=float, default=300.0, help="node 0's program, then killed")
    ap.add_argument("--plain", action="store_true", help="both nodes without kvscope")
    a = ap.parse_args(argv)
    folder = Path(a.folder).resolve()
    gpus = tuple(a.gpus.split("/" if "/" in a.gpus else ",")) if a.gpus else None
    t0 = time.monotonic()
    with engine_lock():
        out = record_two_nodes(folder, folder.parent / "tiny-llama", a.timeout_s,
                               gpus=gpus, blocks=a.blocks, plain=a.plain)  # type: ignore[arg-type]
    for node in (0, 1):
        print(f"node {node}: {folder.parent / f'{folder.name}.node{node}.log'}")
    print(json.dumps({k: out[k] for k in ("node0_rc", "node1_rc", "counts")}),
          f"{time.monotonic() - t0:.0f} s")
    return 0 if out["node0_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
