"""Recorded real-engine scenarios with a known cause (healthy, saturation, thrash, start-up OOM, queueing).

``record(scenario, session, model_dir)`` runs this file as a script under ``kvscope record`` (one
real vLLM CPU engine, serialised by the shared engine lock) and returns the finished session path.
As a script it drives an ``LLMEngine`` with either every request submitted at once or a closed loop
of ``concurrency`` clients (a new request is added when one finishes)::

    python tests/support/scenarios.py MODEL_DIR SCENARIO_JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script by `record`
    sys.path.insert(0, str(ROOT))

from tests.support import workload  # noqa: E402
from tests.support.engine import engine_env, engine_lock  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    """One engine configuration and the workload it serves."""

    name: str
    blocks: int
    """``num_gpu_blocks_override`` (KV cache size in blocks of 128 tokens on CPU)."""
    requests: int
    prefixes: int
    """Distinct shared prompt prefixes."""
    prefix_len_tokens: int
    """Approximate prefix length (the tokenizer is byte level: one token per byte)."""
    max_tokens: int
    max_num_seqs: int = 32
    max_model_len: int = 2048
    concurrency: int | None = None
    """Closed-loop clients; None submits every request at once."""
    order: str = "cycle"
    """``cycle`` (round robin over prefixes) or ``shuffled`` (each round a seeded permutation)."""
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """More EngineArgs."""

    def with_blocks(self, blocks: int) -> Scenario:
        """The same scenario at another KV cache size."""
        return dataclasses.replace(self, name=f"{self.name}-{blocks}b", blocks=blocks)


HEALTHY = Scenario("healthy", blocks=64, requests=24, prefixes=2, prefix_len_tokens=600,
                   max_tokens=32, max_num_seqs=16, concurrency=4)
"""Room for every running request; shared prefixes hit."""

SATURATION = Scenario("saturation", blocks=24, requests=64, prefixes=2, prefix_len_tokens=600,
                      max_tokens=48, max_num_seqs=32)
"""64 requests at once into 24 blocks: KV at the ceiling, requests waiting, preemptions."""

THRASH = Scenario("thrash", blocks=24, requests=60, prefixes=10, prefix_len_tokens=520,
                  max_tokens=32, max_model_len=1024, concurrency=2, order="shuffled")
"""Ten 4-block prefixes recurring in shuffled rounds through a 24-block cache (2 clients)."""

STARTUP_OOM = Scenario("startup_oom", blocks=8, requests=1, prefixes=1, prefix_len_tokens=100,
                       max_tokens=8, max_model_len=4096)
"""max_model_len 4096 needs 32 blocks of 128; only 8 exist: vLLM refuses to start."""

QUEUEING = Scenario("queueing", blocks=128, requests=24, prefixes=2, prefix_len_tokens=600,
                    max_tokens=32, max_num_seqs=2)
"""24 requests at once behind max_num_seqs=2 with a large, mostly empty KV cache."""


def prefix_text(p: int, length: int) -> str:
    """Deterministic prefix ``p`` of ``length`` bytes (distinct from its first block on)."""
    rng = random.Random(1000 + p)
    body = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))
    return (f"[prefix {p:03d}] " + body)[:length]


def prefix_order(s: Scenario) -> list[int]:
    """Which prefix each request uses, in submission order."""
    if s.order == "cycle":
        return [i % s.prefixes for i in range(s.requests)]
    if s.order != "shuffled":
        raise ValueError(f"unknown order {s.order!r}")
    rng = random.Random(s.seed)
    out: list[int] = []
    while len(out) < s.requests:
        round_ = list(range(s.prefixes))
        rng.shuffle(round_)
        out.extend(round_)
    return out[: s.requests]


def prompts(s: Scenario) -> list[str]:
    """The scenario's prompts in submission order."""
    return [workload.prompt(i, prefix_text(p, s.prefix_len_tokens))
            for i, p in enumerate(prefix_order(s))]


def counts_path(session: Path) -> Path:
    """Where ``record`` leaves the independent stat logger's counts of a recorded scenario."""
    return session.with_suffix(".counts.json")


def record(s: Scenario, session: Path, model_dir: Path, timeout_s: float = 900,
           record_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Record ``s`` into ``session`` with ``kvscope record [record_args]`` under the engine lock;
    an independent StatLoggerBase in the same run writes ``counts_path(session)``."""
    session.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(session), *record_args,
           "--", sys.executable, str(Path(__file__).resolve()), str(model_dir),
           json.dumps(dataclasses.asdict(s)), str(counts_path(session))]
    with engine_lock():
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=engine_env(), cwd=ROOT)


@dataclass(frozen=True)
class Recorded:
    """A recorded scenario session and how the recorded program ended."""

    scenario: Scenario
    path: Path
    returncode: int
    output_tail: str


ENV_SCENARIO_DIR = "KVSCOPE_SCENARIO_DIR"
"""Developers only: keep recorded scenarios in this folder across test runs (default: per run)."""


def recorded(s: Scenario, model_dir: Path, base: Path, record_args: tuple[str, ...] = ()
             ) -> Recorded:
    """``s`` recorded under ``base`` once per test run: later calls (any module) reuse the file."""
    base = Path(os.environ.get(ENV_SCENARIO_DIR) or base)
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"{s.name}.kvscope"
    done = base / f"{s.name}.done.json"
    if not done.exists():
        proc = record(s, path, model_dir, record_args=record_args)
        done.write_text(json.dumps({"returncode": proc.returncode,
                                    "output_tail": (proc.stdout + proc.stderr)[-6000:]}))
    info = json.loads(done.read_text())
    return Recorded(s, path, info["returncode"], info["output_tail"])


def run(model_dir: str, s: Scenario, counts_file: str | None = None) -> None:
    """Serve the scenario's workload on a real LLMEngine (this process is the recorded program);
    with ``counts_file``, an independent StatLoggerBase's counts of the run are written there."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    counter, counts = workload.counter_class()
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=model_dir, num_gpu_blocks_override=s.blocks, max_model_len=s.max_model_len,
        enable_prefix_caching=True, max_num_seqs=s.max_num_seqs, disable_log_stats=False,
        **s.extra,
    ), stat_loggers=[counter])
    params = SamplingParams(max_tokens=s.max_tokens, ignore_eos=True, temperature=0.0)
    pending = list(enumerate(prompts(s)))
    pending.reverse()
    limit = s.concurrency or len(pending)
    in_flight = 0
    while pending or eng.has_unfinished_requests():
        while pending and in_flight < limit:
            i, text = pending.pop()
            eng.add_request(str(i), text, params)
            in_flight += 1
        for out in eng.step():
            if out.finished:
                in_flight -= 1
    eng.engine_core.shutdown()
    if counts_file:
        Path(counts_file).write_text(json.dumps(counts))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    scenario = Scenario(**json.loads(sys.argv[2]))
    run(sys.argv[1], scenario, sys.argv[3] if len(sys.argv) > 3 else None)
    print("SCENARIO_DONE", scenario.name, flush=True)
