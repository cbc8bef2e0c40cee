"""A real vLLM OpenAI server on loopback for tests and the compatibility matrix: start, load, read.

The server runs under whichever Python is given (a venv of another vLLM release for ``make
compat``); the load and the counter reads come from this process over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port

COUNTERS = {
    "preemptions": "vllm:num_preemptions_total",
    "prefix_queries_tokens": "vllm:prefix_cache_queries_total",
    "prefix_hits_tokens": "vllm:prefix_cache_hits_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "finished": "vllm:request_success_total",
}
"""kvscope step columns and the server counters they sum to."""


@dataclass
class Server:
    """A running server: its base URL, model directory, process and log file."""

    url: str
    model: str
    proc: subprocess.Popen[bytes]
    log: Path


def server_env() -> dict[str, str]:
    """The server's environment: small CPU KV space, offline, never recording in-process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCOPE_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def kv_events_config(endpoint: str, replay_endpoint: str | None) -> str:
    """``--kv-events-config`` JSON for vLLM's ZMQ publisher."""
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
    if replay_endpoint:
        cfg["replay_endpoint"] = replay_endpoint
    return json.dumps(cfg)


@contextmanager
def running_server(python: str, model: str, log_dir: Path, blocks: int = 24,
                   extra: tuple[str, ...] = (), ready_timeout_s: float = 300,
                   wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``python -m vllm.entrypoints.openai.api_server`` on a free port; stop it on exit.

    ``wrapper`` runs in front of the server's command line (``kvscope record --session S --``);
    ``env`` is added to ``server_env()`` (``CUDA_VISIBLE_DEVICES`` of one node, say).
    """
    port = free_port()
    log = log_dir / f"server-{port}.log"
    proc = subprocess.Popen(
        [*wrapper, python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
         "--host", "127.0.0.1", "--port", str(port), "--num-gpu-blocks-override", str(blocks),
         "--max-model-len", "2048", "--max-num-seqs", "16", "--enable-prefix-caching", *extra],
        env={**server_env(), **(env or {})}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout_s:.0f} s")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield Server(url, model, proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def counters(url: str) -> dict[str, float]:
    """The server's cumulative counters (summed over label series), by kvscope column name."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in names:
                out[names[s.name]] += s.value
    return out


def engine_counters(url: str) -> dict[str, dict[str, float]]:
    """``counters`` per ``engine`` label (vLLM's data-parallel rank): engine -> column -> value."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    names = {v: k for k, v in COUNTERS.items()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in names:
                per = out.setdefault(s.labels.get("engine", "0"), dict.fromkeys(COUNTERS, 0.0))
                per[names[s.name]] += s.value
    return out


def http_status(url: str, path: str) -> str:
    """``"HTTP 404 /path"`` for the server's answer to GET ``path`` (or the error's name)."""
    try:
        return f"HTTP {httpx.get(url + path, timeout=10).status_code} {path}"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} {path}"


def gauge(url: str, name: str) -> float:
    """One gauge of the server's /metrics (first series)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return float(s.value)
    raise KeyError(f"{name} not exposed")


def wait_idle(url: str, timeout_s: float = 120.0) -> None:
    """Wait until nothing runs or waits on the server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (gauge(url, "vllm:num_requests_running") == 0
                and gauge(url, "vllm:num_requests_waiting") == 0):
            return
        time.sleep(0.2)
    raise TimeoutError("server did not become idle")


def drive(url: str, model: str, waves: int = 2, per_wave: int = 16, prefixes: int = 3,
          max_tokens: int = 48) -> list[int]:
    """Waves of concurrent completions over shared ~600-token prefixes; the HTTP status codes.

    On a 24-block cache, 16 requests of 5-6 blocks each overflow it while decoding: vLLM
    preempts, evicts prefix blocks, and recomputes them when their prefix comes back.
    """

    async def go() -> list[int]:
        codes: list[int] = []
        async with httpx.AsyncClient(timeout=300) as client:
            async def one(i: int) -> int:
                p = i % prefixes
                prompt = f"[system {p}] " + chr(97 + p) * 600 + f" question {i}: " + "data " * (i % 9)
                r = await client.post(url + "/v1/completions", json={
                    "model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                    "temperature": 0.0,
                })
                return r.status_code

            for w in range(waves):
                codes += await asyncio.gather(*(one(w * per_wave + i) for i in range(per_wave)))
        return codes

    return asyncio.run(go())


T = TypeVar("T")


@contextmanager
def waves_until_done(wave: Callable[[], list[T]], least: int) -> Iterator[list[T]]:
    """Run ``wave`` over and over in a thread until the block ends and ``least`` results are in.

    For a check that must see a load in flight (a status reading 'recording'): one short wave can
    end between two reads on a busy machine, so the load lasts until the block's wait is over.
    Yields the results list (filled as waves end; whole once the block has exited).
    """
    results: list[T] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set() or len(results) < least:
            results.extend(wave())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        done.set()
        thread.join(300)


@dataclass(frozen=True)
class Timed:
    """One streamed completion as its client saw it."""

    status: int
    ttft_s: float | None
    """Request sent -> first streamed token received."""
    e2e_s: float
    """Request sent -> stream finished."""


def drive_streaming(url: str, model: str, waves: int = 2, per_wave: int = 16, prefixes: int = 3,
                    max_tokens: int = 48, gap_s: float = 0.0, prompt: str | None = None) -> list[Timed]:
    """``drive``'s waves as streamed completions, each timed by the client (TTFT and e2e).

    ``gap_s``: pause between waves (the server drains, so TTFTs spread from queued to immediate).
    ``prompt``: this prompt for every request instead of ``drive``'s shared-prefix ones.
    """

    async def go() -> list[Timed]:
        out: list[Timed] = []
        async with httpx.AsyncClient(timeout=300) as client:
            async def one(i: int) -> Timed:
                p = i % prefixes
                text = prompt if prompt is not None else (
                    f"[system {p}] " + chr(97 + p) * 600 + f" question {i}: " + "data " * (i % 9))
                t0 = time.perf_counter()
                first = None
                async with client.stream("POST", url + "/v1/completions", json={
                    "model": model, "prompt": text, "max_tokens": max_tokens, "ignore_eos": True,
                    "temperature": 0.0, "stream": True,
                }) as r:
                    async for line in r.aiter_lines():
                        if first is None and line.startswith("data: {"):
                            first = time.perf_counter() - t0
                    return Timed(r.status_code, first, time.perf_counter() - t0)

            for w in range(waves):
                out += await asyncio.gather(*(one(w * per_wave + i) for i in range(per_wave)))
                if gap_s and w + 1 < waves:
                    await asyncio.sleep(gap_s)
        return out

    return asyncio.run(go())


def histograms(url: str, names: tuple[str, ...]) -> dict[str, dict[float, float]]:
    """The server's cumulative histogram buckets (``le`` -> count, summed over label series) of
    each family in ``names``, read with prometheus_client's parser."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[float, float]] = {n: {} for n in names}
    for fam in text_string_to_metric_families(text):
        if fam.name in out:
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    out[fam.name][le] = out[fam.name].get(le, 0.0) + s.value
    return out
