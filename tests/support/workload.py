"""A real vLLM workload for tests and sample sessions: shared prefixes, preemptions, prefix hits.

Run as a script (vLLM spawns processes, so the work sits under ``__main__``)::

    python tests/support/workload.py MODEL_DIR --blocks 24 --requests 64 [--engine llm|llmengine|async]
        [--counts OUT.json]

With ``--counts`` an independent StatLoggerBase counts what vLLM reported, for the tests to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prompt(i: int, prefix: str) -> str:
    """Request ``i``'s prompt: the shared ``prefix``, then a short tail of its own."""
    return prefix + f" question {i}: " + "data " * (i % 9)


def prompts(n: int, prefixes: int, prefix_len: int, seed_text: str = "") -> list[str]:
    """``n`` prompts cycling over ``prefixes`` distinct shared prefixes of ~``prefix_len`` bytes."""
    out = []
    for i in range(n):
        p = i % prefixes
        out.append(prompt(i, (f"[system {p}{seed_text}] " + chr(97 + p % 26) * prefix_len)[:prefix_len]))
    return out


_HOG = """
import sys, time, torch
free, _ = torch.cuda.mem_get_info()
x = torch.empty(int(free - float(sys.argv[1]) * 2**30), dtype=torch.uint8, device="cuda")
print("HOG_READY", flush=True)
time.sleep(3600)
"""


def maybe_hog(leave_gib: float | None) -> subprocess.Popen[str] | None:
    """Start a foreign process that takes all but ``leave_gib`` of the GPU's free memory."""
    if leave_gib is None:
        return None
    hog = subprocess.Popen([sys.executable, "-c", _HOG, str(leave_gib)], stdout=subprocess.PIPE,
                           text=True)
    assert hog.stdout is not None
    line = hog.stdout.readline()
    assert "HOG_READY" in line, line
    atexit.register(hog.kill)
    return hog


def counter_class() -> tuple[type, dict[str, Any]]:
    """A StatLoggerBase that counts what vLLM reported, independent of kvscope."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    counts: dict[str, Any] = {"steps": 0, "preemptions": 0, "prefix_queries": 0, "prefix_hits": 0,
                              "finished": 0, "generation_tokens": 0, "prompt_tokens": 0,
                              "spec_steps": 0, "spec_drafts": 0, "spec_draft_tokens": 0,
                              "spec_accepted_tokens": 0, "spec_accepted_per_pos": [],
                              "kv_usage": [], "finished_requests": [], "preempted_queries": 0,
                              "preempted_hits": 0, "connector_queries": 0, "connector_hits": 0,
                              "eviction_events": 0, "eviction_lifetime_sum_s": 0.0,
                              "request_preemptions": {}, "step_counts": [], "requests": {}}

    class Counter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.cfg = vllm_config

        def record(self, scheduler_stats: Any, iteration_stats: Any, *a: Any, **k: Any) -> None:
            if scheduler_stats is not None:
                counts["steps"] += 1
                counts["prefix_queries"] += scheduler_stats.prefix_cache_stats.queries
                counts["prefix_hits"] += scheduler_stats.prefix_cache_stats.hits
                counts["kv_usage"].append(scheduler_stats.kv_cache_usage)
                pcs = scheduler_stats.prefix_cache_stats
                counts["preempted_queries"] += getattr(pcs, "preempted_queries", 0)
                counts["preempted_hits"] += getattr(pcs, "preempted_hits", 0)
                cps = getattr(scheduler_stats, "connector_prefix_cache_stats", None)
                if cps is not None:
                    counts["connector_queries"] += cps.queries
                    counts["connector_hits"] += cps.hits
                for ev in getattr(scheduler_stats, "kv_cache_eviction_events", None) or ():
                    counts["eviction_events"] += 1
                    counts["eviction_lifetime_sum_s"] += ev.lifetime_seconds
                spec = scheduler_stats.spec_decoding_stats
                if spec is not None:
                    counts["spec_steps"] += 1
                    counts["spec_drafts"] += spec.num_drafts
                    counts["spec_draft_tokens"] += spec.num_draft_tokens
                    counts["spec_accepted_tokens"] += spec.num_accepted_tokens
                    per_pos = counts["spec_accepted_per_pos"]
                    for i, n in enumerate(spec.num_accepted_tokens_per_pos):
                        if i == len(per_pos):
                            per_pos.append(0)
                        per_pos[i] += n
            if scheduler_stats is not None or iteration_stats is not None:  # a kvscope step row
                counts["step_counts"].append(None if iteration_stats is None else [
                    iteration_stats.num_prompt_tokens, iteration_stats.num_generation_tokens,
                    iteration_stats.num_preempted_reqs, len(iteration_stats.finished_requests)])
            if iteration_stats is not None:
                counts["preemptions"] += iteration_stats.num_preempted_reqs
                counts["finished"] += len(iteration_stats.finished_requests)
                for f in iteration_stats.finished_requests:
                    counts["request_preemptions"][str(f.request_id)] = getattr(f, "num_preemptions", None)
                    counts["finished_requests"].append({
                        "prefill_s": f.prefill_time, "decode_s": f.decode_time,
                        "prompt_tokens": f.num_prompt_tokens,
                        "generation_tokens": f.num_generation_tokens})
                    counts["requests"][str(f.request_id)] = {
                        "queued_s": f.queued_time, "prefill_s": f.prefill_time,
                        "decode_s": f.decode_time, "inference_s": f.inference_time,
                        "e2e_s": f.e2e_latency, "prompt_tokens": f.num_prompt_tokens,
                        "generation_tokens": f.num_generation_tokens,
                        "cached_tokens": getattr(f, "num_cached_tokens", None),
                        "preemptions": getattr(f, "num_preemptions", None),
                        "finish_reason": f.finish_reason.name}
                counts["generation_tokens"] += iteration_stats.num_generation_tokens
                counts["prompt_tokens"] += iteration_stats.num_prompt_tokens

        def log_engine_initialized(self) -> None:
            counts["num_gpu_blocks"] = self.cfg.cache_config.num_gpu_blocks
            counts["block_size"] = self.cfg.cache_config.block_size

    return Counter, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--engine", default="llmengine", choices=["llm", "llmengine", "async"])
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prefixes", type=int, default=2)
    ap.add_argument("--prefix-len", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--load-format", default=None, help="e.g. dummy (GPU runs without weights)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    ap.add_argument("--prompt-logprobs", type=int, default=None)
    ap.add_argument("--hog-leave-gib", type=float, default=None,
                    help="after start-up, a second process takes all but this much free GPU memory")
    ap.add_argument("--arrivals-per-step", type=int, default=0,
                    help="llmengine: add this many requests per step instead of all at once")
    ap.add_argument("--log-stats", action="store_true", help="llm: turn vLLM's own stats on")
    ap.add_argument("--spec-ngram", type=int, default=None, metavar="K",
                    help="n-gram speculative decoding, K tokens per draft")
    ap.add_argument("--speculative-config", default=None, help="JSON for EngineArgs speculative_config")
    ap.add_argument("--then-prefix-len", type=int, default=None,
                    help="llmengine: once the first requests finish, the same number again with "
                         "prefixes of this length (a second phase, e.g. long prompts after short)")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--engine-args", default=None,
                    help="JSON object of more EngineArgs (e.g. block_size, kv_transfer_config)")
    ap.add_argument("--counts", default=None)
    ap.add_argument("--api-session", default=None, help="record with profiler.record(PATH)")
    a = ap.parse_args(argv)

    from vllm import SamplingParams

    kwargs: dict[str, Any] = dict(
        model=a.model, num_gpu_blocks_override=a.blocks or None, max_model_len=a.max_model_len,
        enable_prefix_caching=not a.no_prefix_caching, max_num_seqs=a.max_num_seqs,
        tensor_parallel_size=a.tp,
    )
    if a.load_format:
        kwargs["load_format"] = a.load_format
    if a.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = a.max_num_batched_tokens
    if a.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = a.gpu_memory_utilization
    if a.spec_ngram:
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": a.spec_ngram,
                                        "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    if a.speculative_config:
        kwargs["speculative_config"] = json.loads(a.speculative_config)
    if a.enforce_eager:
        kwargs["enforce_eager"] = True
    if a.engine_args:
        kwargs.update(json.loads(a.engine_args))
    params = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=0.0,
                            prompt_logprobs=a.prompt_logprobs)
    texts = prompts(a.requests, a.prefixes, a.prefix_len)
    counter, counts = counter_class()

    def run() -> None:
        if a.engine == "llm":
            from vllm import LLM

            llm = LLM(**kwargs, disable_log_stats=not a.log_stats)
            maybe_hog(a.hog_leave_gib)
            t0 = time.perf_counter()
            outs = llm.generate(texts, params, use_tqdm=False)
            counts["generate_s"] = time.perf_counter() - t0
            counts["output_tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
            llm.llm_engine.engine_core.shutdown()
            return
        from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

        if a.engine == "llmengine":
            from vllm.v1.engine.llm_engine import LLMEngine

            eng = LLMEngine.from_engine_args(
                EngineArgs(disable_log_stats=False, **kwargs), stat_loggers=[counter]
            )
            maybe_hog(a.hog_leave_gib)
            t0 = time.perf_counter()
            phases = [list(enumerate(texts))]
            if a.then_prefix_len:
                second = prompts(a.requests, a.prefixes, a.then_prefix_len, seed_text=" then")
                phases.append([(len(texts) + i, t) for i, t in enumerate(second)])
            for pending in phases:
                per_step = a.arrivals_per_step or len(pending)
                while pending or eng.has_unfinished_requests():
                    for i, t in pending[:per_step]:
                        eng.add_request(str(i), t, params)
                    del pending[:per_step]
                    eng.step()
            counts["generate_s"] = time.perf_counter() - t0
            eng.engine_core.shutdown()
            return
        from vllm.v1.engine.async_llm import AsyncLLM

        async def go() -> None:
            eng = AsyncLLM.from_engine_args(
                AsyncEngineArgs(disable_log_stats=False, **kwargs), stat_loggers=[counter]
            )

            async def one(i: int, t: str) -> None:
                async for _ in eng.generate(t, params, request_id=str(i)):
                    pass

            await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
            eng.shutdown()

        asyncio.run(go())

    if a.api_session:
        import profiler

        with profiler.record(a.api_session):
            run()
    else:
        run()
    if a.counts:
        with open(a.counts, "w") as fh:
            json.dump(counts, fh)
    print("WORKLOAD_DONE", json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
