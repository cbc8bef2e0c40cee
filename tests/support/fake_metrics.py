"""A fake vLLM ``/metrics`` server with selectable misbehaviours, for attach fault tests.

It serves vLLM 0.32-shaped Prometheus text (the metric names, labels, histograms and info gauge of
a real one-engine server) whose counters advance on every scrape, and on request misbehaves:

``ok``            realistic text, counters advancing
``garbage``       bytes that are not text at all
``html``          an HTML page (a proxy's error page)
``huge``          a valid body of ``huge_mb`` MB (many histogram series), streamed
``drip``          the valid body one byte every ``drip_s`` seconds
``stall``         accepts the request and never answers (until the server is closed)
``http500``       HTTP 500
``reset``         the connection is reset (RST) before any answer
``nan_gauge``     ``vllm:kv_cache_usage_perc`` is NaN; ``inf_gauge``: running is +Inf;
                  ``neg_gauge``: usage is -0.5
``inf_counter``   ``vllm:prompt_tokens_total`` is +Inf; ``huge_counter``: it is 1e30
``backwards``     the generation-token counter goes down once (only that one), then counts on
``restart``       all counters start again from small values and the process start time changes
                  (once, then counting on)

``set(behaviour, after=N)`` switches after N more scrapes; ``scrapes`` counts /metrics answers.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "tiny-llama"
BLOCK_SIZE = 16
NUM_BLOCKS = 1024
STEP = {  # how much each counter advances per scrape
    "vllm:prompt_tokens_total": 300, "vllm:generation_tokens_total": 40,
    "vllm:request_success_total": 2, "vllm:num_preemptions_total": 1,
    "vllm:prefix_cache_queries_total": 300, "vllm:prefix_cache_hits_total": 128,
}
BEHAVIOURS = ("ok", "garbage", "html", "huge", "drip", "stall", "http500", "reset", "nan_gauge",
              "inf_gauge", "neg_gauge", "inf_counter", "huge_counter", "backwards", "restart")


def _histogram(name: str, labels: str, value: float) -> list[str]:
    out = [f"# HELP {name} Histogram of {name}.", f"# TYPE {name} histogram"]
    for le in (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0):
        out.append(f'{name}_bucket{{{labels},le="{le}"}} {value:.1f}')
    out += [f'{name}_bucket{{{labels},le="+Inf"}} {value:.1f}', f"{name}_count{{{labels}}} {value:.1f}",
            f"{name}_sum{{{labels}}} {value * 0.01:.6f}"]
    return out


def metrics_text(counters: dict[str, float], gauges: dict[str, float], start_s: float,
                 extra_series: int = 0) -> str:
    """A vLLM 0.32-style /metrics body (one engine, ``engine="0"``)."""
    lab = f'engine="0",model_name="{MODEL}"'
    lines = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {start_s!r}",
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{lab}}} {gauges['running']!r}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{lab}}} {gauges['waiting']!r}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{lab}}} {gauges['usage']!r}",
    ]
    for name, value in counters.items():
        base = name[: -len("_total")]
        lines += [f"# HELP {base} {base} counter.", f"# TYPE {base} counter"]
        if base == "vllm:request_success":
            lines.append(f'{name}{{{lab},finished_reason="length"}} {value!r}')
            lines.append(f'{name}{{{lab},finished_reason="stop"}} 0.0')
        else:
            lines.append(f"{name}{{{lab}}} {value!r}")
        lines.append(f"{base}_created{{{lab}}} {start_s!r}")
    lines += _histogram("vllm:time_to_first_token_seconds", lab, counters["vllm:request_success_total"])
    lines += _histogram("vllm:e2e_request_latency_seconds", lab, counters["vllm:request_success_total"])
    for i in range(extra_series):
        lines += _histogram("vllm:request_queue_time_seconds", f'{lab},lora="{i}"', float(i))
    lines += [
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",cache_dtype="auto",engine="0",'
        f'enable_prefix_caching="True",gpu_memory_utilization="0.9",num_gpu_blocks="{NUM_BLOCKS}",'
        'num_cpu_blocks="None"} 1.0',
    ]
    return "\n".join(lines) + "\n"


@dataclass
class FakeVllm:
    """State of the fake server; the handler reads it on every request."""

    behaviour: str = "ok"
    scrapes: int = 0
    drip_s: float = 0.5
    huge_mb: float = 62.0
    start_s: float = field(default_factory=lambda: time.time() - 100.0)
    counters: dict[str, float] = field(default_factory=lambda: {k: 10.0 * v for k, v in STEP.items()})
    _next: tuple[str, int, int | None] | None = None
    _until: int | None = None
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    gauges: dict[str, float] = field(
        default_factory=lambda: {"running": 3.0, "waiting": 1.0, "usage": 0.25})
    """What the gauges read while the behaviour leaves them alone (a fleet's servers differ)."""
    advance: dict[str, float] = field(default_factory=lambda: dict(STEP))
    """How much each counter advances per scrape (empty: an idle server)."""

    def set(self, behaviour: str, after: int = 0, lasting: int | None = None) -> None:
        """Misbehave as ``behaviour`` from the ``after``-th next scrape on, for ``lasting`` scrapes
        (then ``ok`` again; None: for good)."""
        assert behaviour in BEHAVIOURS, behaviour
        with self.lock:
            self._next = (behaviour, self.scrapes + after, lasting)

    def next_body(self) -> tuple[str, str]:
        """Advance one scrape; the behaviour to play and the realistic text of this scrape."""
        with self.lock:
            if self._next is not None and self.scrapes >= self._next[1]:
                self.behaviour, lasting = self._next[0], self._next[2]
                self._until = None if lasting is None else self.scrapes + lasting
                self._next = None
            if self._until is not None and self.scrapes >= self._until:
                self.behaviour, self._until = "ok", None
            self.scrapes += 1
            b = self.behaviour
            if b == "restart":
                self.start_s = time.time()
                self.counters = {k: float(v) for k, v in STEP.items()}
                self.behaviour = "ok"
            else:
                for k, v in self.advance.items():
                    self.counters[k] += v
            counters = dict(self.counters)
            gauges = dict(self.gauges)
            if b == "nan_gauge":
                gauges["usage"] = float("nan")
            elif b == "inf_gauge":
                gauges["running"] = float("inf")
            elif b == "neg_gauge":
                gauges["usage"] = -0.5
            elif b == "inf_counter":
                counters["vllm:prompt_tokens_total"] = float("inf")
            elif b == "huge_counter":
                counters["vllm:prompt_tokens_total"] = 1e30
            elif b == "backwards":  # once, then counting on from the lower value
                self.counters["vllm:generation_tokens_total"] -= 2 * STEP["vllm:generation_tokens_total"]
                counters = dict(self.counters)
                self.behaviour = "ok"
            return b, metrics_text(counters, gauges, self.start_s)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeVllm
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/version":
            return self._send(200, b'{"version": "0.32.0-fake"}')
        if self.path != "/metrics":
            return self._send(404, b"not found")
        behaviour, text = self.fake.next_body()
        body = text.encode()
        if behaviour == "garbage":
            return self._send(200, bytes(range(256)) * 16)
        if behaviour == "html":
            return self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        if behaviour == "http500":
            return self._send(500, b"Internal Server Error")
        if behaviour == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if behaviour == "stall":
            self.fake.closing.wait()
            return None
        if behaviour == "drip":
            self._headers(200, len(body))
            for i in range(len(body)):
                if self.fake.closing.wait(self.fake.drip_s):
                    return None
                try:
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return None
            return None
        if behaviour == "huge":
            filler_b = ("\n".join(_histogram("vllm:request_queue_time_seconds",
                                             f'engine="0",model_name="{MODEL}",lora="x"', 1.0)[2:])
                        + "\n").encode()
            n = int(self.fake.huge_mb * 1e6 / len(filler_b))
            self._headers(200, len(body) + n * len(filler_b))
            try:
                self.wfile.write(body)
                chunk = filler_b * 1000
                for _ in range(n // 1000):
                    self.wfile.write(chunk)
                self.wfile.write(filler_b * (n % 1000))
            except OSError:
                pass
            return None
        return self._send(200, body)

    def _headers(self, status: int, length: int, ctype: str = "text/plain; version=0.0.4") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; version=0.0.4") -> None:
        self._headers(status, len(body), ctype)
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that give up mid-answer (that is the point of several behaviours)


@contextmanager
def fake_vllm(behaviour: str = "ok", **kwargs: float) -> Iterator[FakeVllm]:
    """A running fake server on a free loopback port; ``fake.url`` is its base URL."""
    fake = FakeVllm(behaviour, **kwargs)  # type: ignore[arg-type]
    handler = type("Handler", (_Handler,), {"fake": fake})
    srv = _Server(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, name="fake-vllm", daemon=True)
    t.start()
    fake.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield fake
    finally:
        fake.closing.set()
        srv.shutdown()
        srv.server_close()
