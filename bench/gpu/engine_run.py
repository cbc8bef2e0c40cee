"""One real vLLM engine run for the lent GPU, with an independent stat logger and raw stat dumps.

Run it under ``kvscope record`` (vLLM spawns processes: the work sits under ``__main__``)::

    python bench/gpu/engine_run.py MODEL_DIR --engine-args '{"num_gpu_blocks_override": 700, ...}'
        --workload tiers|spec --counts OUT.json --raw OUT_RAW.json

Workloads:
- ``tiers``: ``--prefixes`` distinct long prefixes (``--prefix-len`` tokens; the tokenizer is byte
  level) in ``--rounds`` shuffled rounds through ``--concurrency`` closed-loop clients, so a prefix
  has left the GPU cache before it comes back (a CPU tier can serve it), then a burst of
  ``--burst`` requests at once (preemptions).
- ``spec``: short (~100 token) and long (~``--prefix-len`` token) prompts, ``--requests`` of each,
  all at once, for speculative decoding on short vs long prompts.

The counter is a ``StatLoggerBase`` of its own (not kvscope's): per step it adds up what vLLM's
SchedulerStats / IterationStats carried (prefix cache, connector prefix cache, preemptions,
finished requests, tokens, spec-decode drafts and acceptances, every numeric entry of
``kv_connector_stats``, eviction events) and keeps the raw objects of up to ``--raw-steps`` steps
that had connector, eviction or spec-decode data, converted to JSON as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from typing import Any


def jsonable(obj: Any, depth: int = 0) -> Any:
    """A JSON-able copy of a vLLM stats object (dataclasses, dicts, lists, enums, numbers)."""
    if depth > 8:
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else repr(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: jsonable(getattr(obj, f.name, None), depth + 1) for f in dataclasses.fields(obj)}
        out["__type__"] = type(obj).__name__
        return out
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist(), depth + 1)
    if hasattr(obj, "__dict__"):
        out = {k: jsonable(v, depth + 1) for k, v in vars(obj).items() if not k.startswith("_")}
        out["__type__"] = type(obj).__name__
        return out
    return repr(obj)


def add_numbers(total: dict[str, Any], data: Any, prefix: str = "") -> None:
    """Sum every number (and every list of numbers, element-wise count and sum) found in ``data``."""
    if isinstance(data, dict):
        for k, v in data.items():
            add_numbers(total, v, f"{prefix}{k}." if prefix or k else prefix)
        return
    key = prefix.rstrip(".")
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        total[key] = total.get(key, 0) + data
    elif isinstance(data, list) and data and all(isinstance(x, int | float) for x in data):
        total[key + ".sum"] = total.get(key + ".sum", 0) + sum(data)
        total[key + ".n"] = total.get(key + ".n", 0) + len(data)


def counter_class(raw_steps: int) -> tuple[type, dict[str, Any], list[dict[str, Any]]]:
    """The independent StatLoggerBase, its totals and its raw per-step records."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    counts: dict[str, Any] = {
        "steps": 0, "preemptions": 0, "prefix_queries": 0, "prefix_hits": 0,
        "preempted_prefix_queries": 0, "preempted_prefix_hits": 0,
        "connector_prefix_queries": 0, "connector_prefix_hits": 0, "connector_prefix_steps": 0,
        "finished": 0, "prompt_tokens": 0, "generation_tokens": 0, "kv_usage_peak": 0.0,
        "eviction_events": 0, "kv_connector_steps": 0, "kv_connector_totals": {},
        "spec_steps": 0, "spec_drafts": 0, "spec_draft_tokens": 0, "spec_accepted_tokens": 0,
        "spec_accepted_per_pos": [], "spec_draft_per_pos": [],
    }
    raw: list[dict[str, Any]] = []

    class Counter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.cfg = vllm_config

        def record(self, scheduler_stats: Any, iteration_stats: Any, *a: Any, **k: Any) -> None:
            s, it = scheduler_stats, iteration_stats
            if s is not None:
                counts["steps"] += 1
                pcs = s.prefix_cache_stats
                counts["prefix_queries"] += pcs.queries
                counts["prefix_hits"] += pcs.hits
                counts["preempted_prefix_queries"] += getattr(pcs, "preempted_queries", 0)
                counts["preempted_prefix_hits"] += getattr(pcs, "preempted_hits", 0)
                counts["kv_usage_peak"] = max(counts["kv_usage_peak"], s.kv_cache_usage)
                cpcs = getattr(s, "connector_prefix_cache_stats", None)
                if cpcs is not None:
                    counts["connector_prefix_steps"] += 1
                    counts["connector_prefix_queries"] += cpcs.queries
                    counts["connector_prefix_hits"] += cpcs.hits
                kvc = getattr(s, "kv_connector_stats", None)
                if kvc:
                    counts["kv_connector_steps"] += 1
                    add_numbers(counts["kv_connector_totals"], jsonable(kvc))
                ev = getattr(s, "kv_cache_eviction_events", None) or []
                counts["eviction_events"] += len(ev)
                sd = getattr(s, "spec_decoding_stats", None)
                if sd is not None:
                    counts["spec_steps"] += 1
                    counts["spec_drafts"] += sd.num_drafts
                    counts["spec_draft_tokens"] += sd.num_draft_tokens
                    counts["spec_accepted_tokens"] += sd.num_accepted_tokens
                    for key, attr in (("spec_accepted_per_pos", "num_accepted_tokens_per_pos"),
                                      ("spec_draft_per_pos", "num_draft_tokens_per_pos")):
                        vals = list(getattr(sd, attr, None) or [])
                        acc = counts[key]
                        acc.extend([0] * (len(vals) - len(acc)))
                        for i, v in enumerate(vals):
                            acc[i] += v
                if (kvc or ev or sd is not None or cpcs is not None) and len(raw) < raw_steps:
                    raw.append({
                        "t_unix_s": time.time(), "step": counts["steps"],
                        "kv_cache_usage": s.kv_cache_usage,
                        "num_running_reqs": s.num_running_reqs,
                        "prefix_cache_stats": jsonable(pcs),
                        "connector_prefix_cache_stats": jsonable(cpcs),
                        "kv_connector_stats": jsonable(kvc),
                        "kv_cache_eviction_events": jsonable(ev[:20]),
                        "kv_cache_eviction_events_count": len(ev),
                        "spec_decoding_stats": jsonable(sd),
                    })
            if it is not None:
                counts["preemptions"] += it.num_preempted_reqs
                counts["finished"] += len(it.finished_requests)
                counts["prompt_tokens"] += it.num_prompt_tokens
                counts["generation_tokens"] += it.num_generation_tokens

        def log_engine_initialized(self) -> None:
            c = self.cfg.cache_config
            counts["num_gpu_blocks"] = c.num_gpu_blocks
            counts["block_size"] = c.block_size

    return Counter, counts, raw


def prefix_text(p: int, length: int) -> str:
    """Prefix ``p``: ``length`` bytes that share nothing with another prefix's first block."""
    return (f"[document {p}] " + "".join(chr(97 + (p * 7 + i) % 26) for i in range(length)))[:length]


def tier_requests(a: argparse.Namespace) -> list[tuple[list[str], int]]:
    """Waves for the tiers workload: (prompts, max clients at once)."""
    rng = random.Random(0)
    rounds: list[str] = []
    for r in range(a.rounds):
        order = list(range(a.prefixes))
        rng.shuffle(order)
        rounds += [prefix_text(p, a.prefix_len) + f" question {r}-{p}: summarise." for p in order]
    burst = [prefix_text(p % a.prefixes, a.prefix_len) + f" burst {i}: " + "more " * (i % 7)
             for i, p in enumerate(range(a.burst))]
    return [(rounds, a.concurrency), (burst, len(burst))]


def spec_requests(a: argparse.Namespace) -> list[tuple[list[str], int]]:
    """Short and long prompts, all at once."""
    short = [f"Question {i}: tell a short story about the number {i}." + " ok" * 20 for i in range(a.requests)]
    long = [prefix_text(i, a.prefix_len) + f" question {i}" for i in range(a.requests)]
    return [(short + long, 2 * a.requests)]


def flush_recording() -> None:
    """Commit kvscope's rows of this process now (``os._exit`` skips its exit hooks)."""
    if not os.environ.get("KVSCOPE_SESSION"):
        return
    try:
        from profiler.recorder import context

        w = context.writer()
        if w is not None:
            w.flush()
    except Exception as exc:
        print(f"could not flush the kvscope session: {exc!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--engine-args", default="{}", help="JSON of extra EngineArgs")
    ap.add_argument("--workload", choices=["tiers", "spec"], default="tiers")
    ap.add_argument("--prefixes", type=int, default=12)
    ap.add_argument("--prefix-len", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--burst", type=int, default=24)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--raw-steps", type=int, default=60)
    ap.add_argument("--counts", default=None)
    ap.add_argument("--raw", default=None)
    a = ap.parse_args(argv)

    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    kwargs: dict[str, Any] = dict(model=a.model, load_format="dummy", dtype="bfloat16",
                                  enable_prefix_caching=True, max_model_len=8192)
    kwargs.update(json.loads(a.engine_args))
    counter, counts, raw = counter_class(a.raw_steps)
    t0 = time.perf_counter()
    eng = LLMEngine.from_engine_args(EngineArgs(disable_log_stats=False, **kwargs),
                                     stat_loggers=[counter])
    counts["startup_s"] = time.perf_counter() - t0
    params = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=0.0)
    waves = tier_requests(a) if a.workload == "tiers" else spec_requests(a)
    t0 = time.perf_counter()
    n = 0
    for texts, clients in waves:
        pending = list(texts)
        live = 0
        while pending or eng.has_unfinished_requests():
            while pending and live < clients:
                eng.add_request(str(n), pending.pop(0), params)
                n += 1
                live += 1
            for out in eng.step():
                if out.finished:
                    live -= 1
    counts["generate_s"] = time.perf_counter() - t0
    counts["requests"] = n
    counts["engine_args"] = {k: v for k, v in kwargs.items() if k != "model"}
    eng.engine_core.shutdown()
    if a.counts:
        with open(a.counts, "w") as fh:
            json.dump(counts, fh, indent=1)
    if a.raw:
        with open(a.raw, "w") as fh:
            json.dump({"vllm_steps_with_data": raw, "totals": counts}, fh, indent=1)
    print("ENGINE_RUN_DONE", json.dumps({k: v for k, v in counts.items() if k != "kv_connector_totals"}))
    print("KV_CONNECTOR_TOTALS", json.dumps(counts["kv_connector_totals"]))
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    flush_recording()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a failed engine can otherwise hang the device call until its time limit
