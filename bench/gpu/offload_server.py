"""A real vLLM OpenAI server with KV offloading on the lent GPU, attached by kvscope under load.

    python bench/gpu/offload_server.py MODEL_DIR OUT_DIR [--name NAME]

Starts the server with the issue's arguments (700 GPU blocks, ``--kv-offloading-size 8``,
``--kv-offloading-backend native``) plus ``--kv-cache-metrics`` and ZMQ KV events on
``tcp://*:PORT``; runs ``kvscope attach`` on it (KV events from ``tcp://127.0.0.1:PORT``); drives
rounds of long shared prefixes (more than the GPU cache holds, so the CPU tier serves the
returning ones); waits until the server is idle and the session has every finished request;
saves the server's ``/metrics`` text, the attach session and a summary (counters vs the session's
sums; the offload families the server exported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import compat  # noqa: E402
from tests.support import server as srv  # noqa: E402

OFFLOAD_ARGS = ("--load-format", "dummy", "--kv-offloading-size", "8",
                "--kv-offloading-backend", "native", "--kv-cache-metrics", "--enforce-eager")
"""After running_server's own (700 blocks, max-model-len 2048, max-num-seqs 16, prefix caching)."""


def prefix_text(p: int, length: int) -> str:
    """The same prefixes as engine_run.py's tiers workload."""
    return (f"[document {p}] " + "".join(chr(97 + (p * 7 + i) % 26) for i in range(length)))[:length]


def drive(url: str, model: str, prefixes: int, prefix_len: int, rounds: int, clients: int,
          max_tokens: int) -> list[int]:
    """Shuffled rounds over the prefixes through ``clients`` concurrent clients; status codes."""
    rng = random.Random(0)
    prompts = []
    for r in range(rounds):
        order = list(range(prefixes))
        rng.shuffle(order)
        prompts += [prefix_text(p, prefix_len) + f" question {r}-{p}: summarise." for p in order]

    async def go() -> list[int]:
        sem = asyncio.Semaphore(clients)
        async with httpx.AsyncClient(timeout=300) as client:
            async def one(prompt: str) -> int:
                async with sem:
                    r = await client.post(url + "/v1/completions", json={
                        "model": model, "prompt": prompt, "max_tokens": max_tokens,
                        "ignore_eos": True, "temperature": 0.0})
                    return r.status_code

            return list(await asyncio.gather(*(one(p) for p in prompts)))

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    """Run it; print a summary line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--name", default="gpu_h200_offload_attach")
    ap.add_argument("--metrics-name", default="metrics_offload.txt")
    ap.add_argument("--prefixes", type=int, default=12)
    ap.add_argument("--prefix-len", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kv_port = srv.free_port()
    cfg = srv.kv_events_config(f"tcp://*:{kv_port}", None)
    summary: dict[str, object] = {}
    with srv.running_server(sys.executable, a.model, out, blocks=700,
                            extra=("--kv-events-config", cfg, *OFFLOAD_ARGS)) as s:
        session = out / f"{a.name}.kvscope"
        proc, err = compat._start_attach(sys.executable, s.url, session, f"tcp://127.0.0.1:{kv_port}")
        if proc is None:
            print("ATTACH_FAILED", err[-2000:])
            return 1
        before = srv.counters(s.url)
        t0 = time.monotonic()
        codes = drive(s.url, a.model, a.prefixes, a.prefix_len, a.rounds, a.clients, a.max_tokens)
        summary["drive_s"] = time.monotonic() - t0
        srv.wait_idle(s.url)
        after = srv.counters(s.url)
        compat._wait(lambda: compat._steps_sum(session, "finished") >= after["finished"] - before["finished"],
                     30, proc)
        time.sleep(1.0)  # one more scrape interval for the gauges' last values
        text = httpx.get(s.url + "/metrics", timeout=10).text
        (out / a.metrics_name).write_text(text)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        summary["attach_exit"] = proc.returncode
        summary["attach_stderr_tail"] = err[-1500:]
    summary["http"] = sorted(set(codes))
    summary["server_deltas"] = {k: after[k] - before[k] for k in srv.COUNTERS}
    summary["session_sums"] = {k: compat._steps_sum(session, k) for k in srv.COUNTERS}
    summary["kv_event_rows"] = compat._scalar(session, "SELECT COUNT(*) FROM kv_events")
    summary["offload_families"] = sorted({ln.split("{")[0].split(" ")[0] for ln in text.splitlines()
                                          if ln.startswith(("vllm:kv_offload", "vllm:external_prefix",
                                                            "vllm:prompt_tokens_by_source",
                                                            "vllm:prompt_tokens_cached", "vllm:kv_block"))})
    (out / f"{a.name}_summary.json").write_text(json.dumps(summary, indent=1))
    print("OFFLOAD_SERVER", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
