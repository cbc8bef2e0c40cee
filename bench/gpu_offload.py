"""KV offloading on the lent GPU (vLLM 0.26, one H200): a recorded session and a /metrics fixture.

    python bench/gpu_offload.py MODEL_DIR OUT_DIR [--blocks 700] [--offload-gib 8] [--prefixes 16]
        [--prefix-len 3000] [--rounds 3] [--concurrency 8] [--burst 64] [--skip-serve]

MODEL_DIR: a Llama-3-8B-shaped directory (``python bench/gpu_model.py DIR TOKENIZER``; weights are
``load_format="dummy"``). Writes into OUT_DIR:

* ``gpu_h200_offload.kvscope``: ``kvscope record --kv-events --kv-cache-metrics`` of an LLMEngine
  with ``num_gpu_blocks_override=BLOCKS``, ``kv_offloading_size=GIB``, ``kv_offloading_backend=
  "native"``: ``--prefixes`` distinct ~``--prefix-len``-token prefixes in ``--rounds`` shuffled
  rounds through ``--concurrency`` closed-loop clients (more than the GPU cache holds, so a prefix
  is evicted from the GPU before it returns and the CPU tier can serve it), then ``--burst``
  requests at once (preemptions);
* ``gpu_h200_offload_counts.json``: what an independent StatLoggerBase in the same run saw (the
  tests compare the session against it), and ``gpu_h200_offload_raw.json``: the first steps'
  ``kv_connector_stats`` / ``connector_prefix_cache_stats`` / eviction events as vLLM produced them;
* unless ``--skip-serve``: ``metrics_offload_vllm026.txt``, the ``/metrics`` text of a real
  ``vllm.entrypoints.openai.api_server`` with the same offloading arguments plus
  ``--kv-cache-metrics --kv-cache-metrics-sample 1.0`` and ZMQ KV events, after the same workload
  (and ``metrics_offload_vllm026_before.txt``, before it);
  ``gpu_h200_offload_attach.kvscope`` (``kvscope attach --kv-events`` on it during the load) and
  ``gpu_h200_offload_server_counts.json`` (the server's counters at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def prefix_text(p: int, length: int) -> str:
    """Prefix ``p``: ``length`` bytes (one token each with the byte tokenizer), distinct from byte 0."""
    rng = random.Random(1000 + p)
    return (f"[document {p:03d}] " + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ")
                                            for _ in range(length)))[:length]


def prompts(a: argparse.Namespace) -> list[str]:
    """Shuffled rounds over the prefixes, then the burst (the same list for the engine and server)."""
    rng = random.Random(0)
    out = []
    for r in range(a.rounds):
        order = list(range(a.prefixes))
        rng.shuffle(order)
        out += [prefix_text(p, a.prefix_len) + f" question {r}-{p}: summarise." for p in order]
    out += [prefix_text(i % a.prefixes, a.prefix_len) + f" burst {i}." for i in range(a.burst)]
    return out


def _add_numbers(total: dict[str, float], data: Any, prefix: str = "") -> None:
    """Independent of kvscope: every number in a stats payload summed under its dotted path."""
    if isinstance(data, dict):
        for k, v in data.items():
            _add_numbers(total, v, f"{prefix}{k}.")
    elif isinstance(data, bool):
        return
    elif isinstance(data, int | float):
        total[prefix.rstrip(".")] = total.get(prefix.rstrip("."), 0) + data
    elif isinstance(data, list | tuple) and all(isinstance(x, int | float) for x in data):
        total[prefix + "n"] = total.get(prefix + "n", 0) + len(data)
        total[prefix + "sum"] = total.get(prefix + "sum", 0) + sum(data)


def _jsonable(obj: Any, depth: int = 0) -> Any:
    if depth > 6:
        return repr(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _jsonable(v, depth + 1) for k, v in vars(obj).items() if not k.startswith("_")}
    return repr(obj)


def engine_run(a: argparse.Namespace) -> int:
    """The recorded program: one LLMEngine with CPU offloading and an independent stat logger."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.metrics.loggers import StatLoggerBase

    counts: dict[str, Any] = {"steps": 0, "preemptions": 0, "prefix_queries": 0, "prefix_hits": 0,
                              "preempted_queries": 0, "preempted_hits": 0, "connector_queries": 0,
                              "connector_hits": 0, "connector_hits_by_source": {},
                              "kv_connector_stats": {}, "eviction_events": 0,
                              "eviction_lifetime_sum_s": 0.0, "finished": 0,
                              "request_preemptions": {}}
    raw: list[Any] = []

    class Counter(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.cfg = vllm_config

        def record(self, s: Any, it: Any, *args: Any, **kwargs: Any) -> None:
            if s is not None:
                counts["steps"] += 1
                counts["prefix_queries"] += s.prefix_cache_stats.queries
                counts["prefix_hits"] += s.prefix_cache_stats.hits
                counts["preempted_queries"] += s.prefix_cache_stats.preempted_queries
                counts["preempted_hits"] += s.prefix_cache_stats.preempted_hits
                c = s.connector_prefix_cache_stats
                if c is not None:
                    counts["connector_queries"] += c.queries
                    counts["connector_hits"] += c.hits
                    for src, n in (getattr(c, "hits_by_source", None) or {}).items():
                        key = str(getattr(src, "value", src))
                        counts["connector_hits_by_source"][key] = \
                            counts["connector_hits_by_source"].get(key, 0) + n
                if s.kv_connector_stats:
                    _add_numbers(counts["kv_connector_stats"], s.kv_connector_stats)
                for ev in s.kv_cache_eviction_events or ():
                    counts["eviction_events"] += 1
                    counts["eviction_lifetime_sum_s"] += ev.lifetime_seconds
                if len(raw) < 40 and (s.kv_connector_stats or s.kv_cache_eviction_events
                                      or (c is not None and c.hits)):
                    raw.append(_jsonable({"kv_connector_stats": s.kv_connector_stats,
                                          "connector_prefix_cache_stats": c,
                                          "kv_cache_eviction_events": s.kv_cache_eviction_events[:3],
                                          "kv_cache_usage": s.kv_cache_usage}))
            if it is not None:
                counts["preemptions"] += it.num_preempted_reqs
                counts["finished"] += len(it.finished_requests)
                for f in it.finished_requests:
                    counts["request_preemptions"][str(f.request_id)] = getattr(f, "num_preemptions", None)

        def log_engine_initialized(self) -> None:
            counts["num_gpu_blocks"] = self.cfg.cache_config.num_gpu_blocks
            counts["block_size"] = self.cfg.cache_config.block_size

    offload = ({"kv_offloading_size": a.offload_gib, "kv_offloading_backend": "native"}
               if a.offload_gib > 0 else {})
    if a.vllm_options:  # what kvscope record --kv-events --kv-cache-metrics turns on, without kvscope
        from vllm.config import KVEventsConfig

        offload = {**offload, "kv_cache_metrics": True, "kv_cache_metrics_sample": 1.0,
                   "kv_events_config": KVEventsConfig(enable_kv_cache_events=True, publisher="null")}
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=a.model, load_format="dummy", num_gpu_blocks_override=a.blocks,
        enable_prefix_caching=True, max_model_len=a.prefix_len + 512, max_num_seqs=a.max_num_seqs,
        disable_log_stats=False, **offload, **({"gpu_memory_utilization": 0.85} if a.offload_gib > 0
                                                else {}),
    ), stat_loggers=[Counter])
    params = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=0.0)
    texts = prompts(a)
    rounds, burst = texts[: len(texts) - a.burst], texts[len(texts) - a.burst:]
    t0 = time.perf_counter()
    pending = list(enumerate(rounds))[::-1]
    in_flight = 0
    while pending or eng.has_unfinished_requests():
        while pending and in_flight < a.concurrency:
            i, text = pending.pop()
            eng.add_request(f"r{i}", text, params)
            in_flight += 1
        for out in eng.step():
            if out.finished:
                in_flight -= 1
    for i, text in enumerate(burst):
        eng.add_request(f"b{i}", text, params)
    while eng.has_unfinished_requests():
        eng.step()
    counts["generate_s"] = time.perf_counter() - t0
    eng.engine_core.shutdown()
    Path(a.counts).write_text(json.dumps(counts, indent=1))
    Path(a.raw).write_text(json.dumps(raw, indent=1))
    print("GPU_OFFLOAD_ENGINE_DONE", json.dumps({k: v for k, v in counts.items()
                                                 if k != "request_preemptions"})[:3000], flush=True)
    return 0


def serve(a: argparse.Namespace, out: Path) -> None:
    """A real server with offloading, attached by kvscope during the load; saves /metrics text."""
    import httpx

    from tests.support import server as srv
    from tests.support.ports import free_port

    port = free_port()
    offload = (("--kv-offloading-size", str(a.offload_gib), "--kv-offloading-backend", "native",
                "--gpu-memory-utilization", "0.85") if a.offload_gib > 0 else ())
    # after running_server's own flags: argparse keeps the last value of a repeated option
    extra = ("--max-model-len", str(a.prefix_len + 512), "--max-num-seqs", str(a.max_num_seqs),
             "--load-format", "dummy", *offload, "--kv-cache-metrics",
             "--kv-cache-metrics-sample", "1.0",
             "--kv-events-config", srv.kv_events_config(f"tcp://*:{port}", None))
    session = out / "gpu_h200_offload_attach.kvscope"
    with srv.running_server(sys.executable, a.model, out, blocks=a.blocks, extra=extra) as server:
        (out / "metrics_offload_vllm026_before.txt").write_text(
            httpx.get(server.url + "/metrics", timeout=30).text)
        attach = subprocess.Popen(
            [sys.executable, "-m", "profiler.cli", "attach", server.url, "--session", str(session),
             "--kv-events", f"tcp://127.0.0.1:{port}", "--interval-s", "0.25"],
            cwd=ROOT, stdout=(out / "attach.log").open("wb"), stderr=subprocess.STDOUT)
        time.sleep(3)  # attach takes its baseline scrape and subscribes before the load

        async def go() -> list[int]:
            texts = prompts(a)
            rounds, burst = texts[: len(texts) - a.burst], texts[len(texts) - a.burst:]
            clients = asyncio.Semaphore(a.concurrency)
            async with httpx.AsyncClient(timeout=600) as client:
                async def one(text: str, limit: asyncio.Semaphore | None) -> int:
                    body = {"model": a.model, "prompt": text, "max_tokens": a.max_tokens,
                            "ignore_eos": True, "temperature": 0.0}
                    if limit is None:
                        return (await client.post(server.url + "/v1/completions", json=body)).status_code
                    async with limit:
                        return (await client.post(server.url + "/v1/completions", json=body)).status_code

                codes = list(await asyncio.gather(*(one(t, clients) for t in rounds)))
                codes += await asyncio.gather(*(one(t, None) for t in burst))
                return codes

        codes = asyncio.run(go())
        srv.wait_idle(server.url, timeout_s=300)
        time.sleep(2.0)  # a few more scrape intervals after the last request
        (out / "metrics_offload_vllm026.txt").write_text(httpx.get(server.url + "/metrics",
                                                                   timeout=30).text)
        counters = srv.counters(server.url)
        attach.send_signal(signal.SIGINT)
        attach.wait(120)
        (out / "gpu_h200_offload_server_counts.json").write_text(json.dumps(
            {"http": {str(c): codes.count(c) for c in set(codes)}, "counters": counters}, indent=1))
        print("GPU_OFFLOAD_SERVE_DONE", json.dumps(counters), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--blocks", type=int, default=700)
    ap.add_argument("--offload-gib", type=float, default=8.0,
                    help="kv_offloading_size in GiB (0: no offloading, for a dry run on a CPU)")
    ap.add_argument("--prefixes", type=int, default=16)
    ap.add_argument("--prefix-len", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--engine-run", action="store_true",
                    help="run the engine in this process, not under kvscope record (with --counts, --raw)")
    ap.add_argument("--vllm-options", action="store_true",
                    help="--engine-run: turn on vLLM's KV events (null publisher) and kv_cache_metrics "
                         "(sample 1.0) itself, as kvscope record --kv-events --kv-cache-metrics does")
    ap.add_argument("--counts", default=None, help="--engine-run: the independent counter's JSON")
    ap.add_argument("--raw", default=None, help="--engine-run: the first steps' raw stats JSON")
    a = ap.parse_args(argv)
    if a.engine_run:
        return engine_run(a)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    session = out / "gpu_h200_offload.kvscope"
    child = [sys.executable, str(Path(__file__).resolve()), a.model, str(out), "--engine-run",
             "--counts", str(out / "gpu_h200_offload_counts.json"),
             "--raw", str(out / "gpu_h200_offload_raw.json"),
             *(f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
               if k in ("blocks", "offload_gib", "prefixes", "prefix_len", "rounds", "concurrency",
                        "burst", "max_tokens", "max_num_seqs"))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    code = subprocess.call([sys.executable, "-m", "profiler.cli", "record", "--kv-events",
                            "--kv-cache-metrics", "--session", str(session), "--", *child],
                           cwd=ROOT, env=env)
    print(f"recorded {session}: exit {code}", flush=True)
    subprocess.call([sys.executable, "-m", "profiler.cli", "report", "--json", str(session)],
                    cwd=ROOT, stdout=(out / "gpu_h200_offload_report.json").open("w"))
    if not a.skip_serve:
        serve(a, out)
    return code


if __name__ == "__main__":
    sys.exit(main())
