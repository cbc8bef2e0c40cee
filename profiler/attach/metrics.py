"""/metrics scraping: fetch, parse with prometheus_client, map vLLM 0.20-0.33 names, diff counters."""

from __future__ import annotations

import http.client
import io
import math
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from profiler.attach import histograms as hist
from profiler.attach import tier_metrics
from profiler.units import first_line

GAUGES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage_frac": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
"""steps column -> gauge names, newest first (the first one a server exposes wins)."""

COUNTERS: dict[str, tuple[str, ...]] = {
    "prefix_queries_tokens": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_hits_tokens": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "preemptions": ("vllm:num_preemptions",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "finished": ("vllm:request_success",),
}
"""steps column -> counter names without ``_total``, newest first; all label series are summed."""

CACHE_INFO = "vllm:cache_config_info"
"""Info gauge whose labels carry the cache config (block_size, num_gpu_blocks, ...)."""

_SKIP_SUFFIXES = ("_created", "_bucket", "_sum", "_count", "_gsum", "_gcount")

MAX_BODY_BYTES = 16 * 2**20
"""Largest /metrics answer read (a real one is ~100 KB); a larger one fails the scrape."""

COUNT_MAX = 2**31
"""Largest plausible running/waiting gauge; a larger (or negative, or non-finite) one is NULL."""
FRAC_TOLERANCE = 1e-3
"""How far above 1 ``kv_usage_frac`` may read before it counts as impossible."""
COUNTER_MAX = 2.0**63
"""Counters at or beyond SQLite's int64 range (or negative, or non-finite) are dropped."""

_WANTED = frozenset(
    [n for names in (*GAUGES.values(), *COUNTERS.values()) for n in names]
    + [CACHE_INFO, "process_start_time_seconds"]
) | hist.WANTED_NAMES
"""Family names parse_metrics reads; every other line is only checked to look like Prometheus."""
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=[{ \t])")


class FetchError(Exception):
    """An HTTP request to a server failed; the message is one line."""


class NotVllmError(Exception):
    """The endpoint answers but is not a vLLM server; the message is one line."""


@dataclass
class EngineScrape:
    """One engine's numbers in one scrape (counters are cumulative since server start)."""

    engine_label: str
    model: str | None = None
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    cache_info: dict[str, str] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)
    """Columns with an impossible value in this scrape (absent from gauges/counters: NULL)."""
    histograms: dict[str, hist.Histogram] = field(default_factory=dict)
    """Latency histograms (``profiler.attach.histograms.HISTOGRAMS`` names), cumulative."""


@dataclass
class Scrape:
    """A parsed /metrics body."""

    t_unix_s: float
    engines: dict[str, EngineScrape]
    process_start_unix_s: float | None = None
    """``process_start_time_seconds`` when exposed: it changes when the server restarts."""
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    """(column, why) -> one-line description of each impossible value left out of this scrape."""
    extra: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    """Samples of the KV tier and residency families (``tier_metrics``), as parsed."""


def fetch_text(url: str, timeout_s: float, max_bytes: int = MAX_BODY_BYTES) -> str:
    """GET ``url`` and return the body as text; raises FetchError with a one-line reason.

    ``timeout_s`` bounds the whole request (connect, headers and body), not each read: a server
    that answers one byte at a time cannot hold a scrape longer. A body over ``max_bytes`` fails.
    """
    deadline = time.monotonic() + timeout_s
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://HOST[:PORT]/PATH")
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
        raw: socket.socket | None = None
        try:
            conn.connect()
            raw = conn.sock
            conn.sock = _DeadlineSocket(raw, deadline)  # type: ignore[assignment]
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise FetchError(f"GET {url} returned HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(_too_big(url, max_bytes))
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(_too_big(url, max_bytes))
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", errors="replace")
        finally:
            conn.close()
            if raw is not None:
                raw.close()
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError(f"GET {url} timed out after {timeout_s:g} s") from exc
    except (ConnectionError, OSError) as exc:
        raise FetchError(f"cannot reach {url}: {_reason(exc)}") from exc
    except http.client.HTTPException as exc:
        raise FetchError(f"GET {url}: broken HTTP answer ({_reason(exc)})") from exc
    except ValueError as exc:
        raise FetchError(f"bad URL {url}: {_reason(exc)}") from exc


def _too_big(url: str, max_bytes: int) -> str:
    return (f"GET {url}: answer larger than {max_bytes / 2**20:g} MiB; "
            "not a /metrics body kvscope reads")


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one wall-clock deadline (each read gets what is left of it)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buf)


class _DeadlineSocket:
    """Wraps a connected socket so that http.client's response reads obey ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        """No-op: http.client closes the connection while the response is still read from it
        (a real socket defers that through makefile's reference count); fetch_text closes it."""

    def sendall(self, data: bytes) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _reason(exc: object) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def parse_metrics(text: str, t_unix_s: float, url: str = "") -> Scrape:
    """Parse a /metrics body into per-engine gauges, cumulative counters and cache config.

    Raises NotVllmError when the body is not Prometheus text or has no ``vllm:`` metric.
    """
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    where = url or "endpoint"
    kept, has_vllm = _wanted_lines(text, where)
    try:
        for fam in text_string_to_metric_families(kept):
            for s in fam.samples:
                families.setdefault(_base_name(s.name), []).append((s.name, s.labels, s.value))
    except Exception as exc:  # the parser raises ValueError/TypeError/IndexError on garbage
        raise NotVllmError(
            f"{where}: /metrics is not Prometheus text ({first_line(exc)}); not a vLLM server?"
        ) from exc
    if not has_vllm:
        raise NotVllmError(f"{where}: /metrics has no vllm: metrics; not a vLLM server")
    problems: dict[tuple[str, str], str] = {}
    engines: dict[str, EngineScrape] = {}

    def engine(labels: dict[str, str]) -> EngineScrape:
        label = labels.get("engine") or "0"
        eng = engines.get(label)
        if eng is None:
            eng = engines[label] = EngineScrape(label)
        if eng.model is None and labels.get("model_name"):
            eng.model = labels["model_name"]
        return eng

    for column, names in GAUGES.items():
        for name in names:
            if name in families:
                for _, labels, value in families[name]:
                    eng = engine(labels)
                    why = _bad_gauge(column, value)
                    if why:
                        problems[(column, why)] = f"{name} = {value!r} is {why}"
                        eng.gauges.pop(column, None)
                        eng.bad.add(column)
                    elif column not in eng.bad:
                        eng.gauges[column] = value
                break
    for column, names in COUNTERS.items():
        for name in names:
            if name in families:
                for sample_name, labels, value in families[name]:
                    if sample_name.endswith(_SKIP_SUFFIXES):
                        continue
                    eng = engine(labels)
                    total = eng.counters.get(column, 0.0) + value
                    why = _bad_counter(value) or _bad_counter(total)
                    if why:
                        problems[(column, why)] = f"{sample_name} = {value!r} is {why}"
                        eng.counters.pop(column, None)
                        eng.bad.add(column)
                    elif column not in eng.bad:
                        eng.counters[column] = total
                break
    for _, labels, _ in families.get(CACHE_INFO, []):
        engine(labels).cache_info = dict(labels)
    latency = hist.collect((s for name in hist.WANTED_NAMES for s in families.get(name, ())), problems)
    for label, by_metric in latency.items():
        engine({"engine": label}).histograms = by_metric
    start = families.get("process_start_time_seconds")
    start_s = start[0][2] if start and math.isfinite(start[0][2]) else None
    extra = [sample for base, samples in families.items() if tier_metrics.wanted(base)
             for sample in samples]
    return Scrape(t_unix_s, engines, start_s, problems, extra)


def _wanted_lines(text: str, where: str) -> tuple[str, bool]:
    """The lines of the families parse_metrics reads, and whether any ``vllm:`` sample is there.

    Every line is checked to look like Prometheus text (so garbage and HTML are refused), but only
    the few wanted families go through the full parser: a large body stays cheap to read.
    """
    kept: list[str] = []
    has_vllm = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            words = line.split(None, 3)
            if len(words) >= 3 and words[1] in ("TYPE", "HELP") and _wanted(_base_name(words[2])):
                kept.append(line)
            continue
        m = _NAME.match(line)
        if m is None:
            raise NotVllmError(
                f"{where}: /metrics is not Prometheus text (line {number}: {line[:40]!r}); "
                "not a vLLM server?"
            )
        name = m.group()
        has_vllm = has_vllm or name.startswith("vllm:")
        if _wanted(_base_name(name)):
            kept.append(line)
    return "\n".join(kept) + "\n", has_vllm


def _wanted(base_name: str) -> bool:
    return base_name in _WANTED or tier_metrics.wanted(base_name)


def _bad_gauge(column: str, value: float) -> str | None:
    """Why ``value`` cannot be the gauge ``column`` (None when it can)."""
    if not math.isfinite(value):
        return "not a finite number"
    if value < 0:
        return "negative"
    if column == "kv_usage_frac" and value > 1 + FRAC_TOLERANCE:
        return "above 1"
    if column != "kv_usage_frac" and value > COUNT_MAX:
        return f"above {COUNT_MAX}"
    return None


def _bad_counter(value: float) -> str | None:
    """Why ``value`` cannot be a cumulative counter (None when it can)."""
    if not math.isfinite(value):
        return "not a finite number"
    if value < 0:
        return "negative"
    if value >= COUNTER_MAX:
        return "beyond SQLite's 64-bit range"
    return None


def _base_name(sample_name: str) -> str:
    """Family key of a sample: counters lose ``_total`` so 0.20-era and current names match."""
    for suffix in ("_total", "_created"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name



@dataclass
class Deltas:
    """Counter increase over one interval, per steps column (None = counter not exposed)."""

    values: dict[str, float | None]
    reset: bool
    """A counter went down or the server restarted: the deltas count from the restart."""
    backwards: tuple[str, ...] = ()
    """Columns whose counter went down while the server did not restart (their delta is None)."""


class CounterTracker:
    """Turns cumulative counters into per-interval deltas for one engine, surviving restarts."""

    def __init__(self) -> None:
        self._last: dict[str, float] | None = None
        self._unknown: set[str] = set()
        """Columns whose value was impossible before any good one: no baseline to diff from."""

    @property
    def has_baseline(self) -> bool:
        """True once a first scrape has been seen."""
        return self._last is not None

    def update(self, counters: dict[str, float], restarted: bool = False,
               bad: set[str] | frozenset[str] = frozenset(),
               restart_known: bool = False) -> Deltas | None:
        """Deltas since the previous call (None on the first call, which only sets the baseline).

        ``bad``: columns whose value was impossible in this scrape (their delta is None, and the
        next good value is diffed against the last good one). ``restart_known``: the server
        exposes its start time, so ``restarted`` is reliable; a counter that goes down while it
        did not restart is then that counter's fault alone (its delta is None, the others are
        kept). Without it any counter going down is taken for a restart.
        """
        last = self._last
        # a counter missing from this scrape (or impossible in it) keeps its last good value, so
        # that the next good scrape's delta covers the interval it was missing from
        self._last = {**(last or {}), **counters}
        self._unknown |= {c for c in bad if c not in self._last}
        if last is None:
            return None
        down = tuple(k for k, v in last.items() if counters.get(k, v) < v)
        reset = restarted or (bool(down) and not restart_known)
        backwards = () if reset else down
        values: dict[str, float | None] = {}
        for column in COUNTERS:
            now = counters.get(column)
            if now is None or column in backwards:
                values[column] = None
            elif column in self._unknown and column not in last:
                values[column] = None  # first good value after impossible ones: a baseline
            elif reset or column not in last:
                values[column] = now
            else:
                values[column] = now - last[column]
        self._unknown -= set(counters)
        return Deltas(values, reset, backwards)


def cache_config(info: dict[str, str]) -> dict[str, object]:
    """engines-table columns from ``vllm:cache_config_info`` labels (missing ones are None)."""
    prefix = info.get("enable_prefix_caching")
    return {
        "block_size": _int(info.get("block_size")),
        "num_gpu_blocks": _int(info.get("num_gpu_blocks")),
        "gpu_memory_utilization": _float(info.get("gpu_memory_utilization")),
        "enable_prefix_caching": None if prefix in (None, "None") else int(prefix == "True"),
        "kv_cache_dtype": info.get("cache_dtype"),
    }


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "None") else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "None") else None
    except ValueError:
        return None
