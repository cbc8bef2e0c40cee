"""/metrics scraping: fetch, parse with prometheus_client, map vLLM 0.20-0.33 names, diff counters."""

from __future__ import annotations

import http.client
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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


@dataclass
class Scrape:
    """A parsed /metrics body."""

    t_unix_s: float
    engines: dict[str, EngineScrape]
    process_start_unix_s: float | None = None
    """``process_start_time_seconds`` when exposed: it changes when the server restarts."""


def fetch_text(url: str, timeout_s: float) -> str:
    """GET ``url`` and return the body as text; raises FetchError with a one-line reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (user URL)
            return resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise FetchError(f"GET {url} returned HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach {url}: {_reason(exc.reason)}") from exc
    except TimeoutError as exc:
        raise FetchError(f"GET {url} timed out after {timeout_s:g} s") from exc
    except (ConnectionError, OSError) as exc:
        raise FetchError(f"cannot reach {url}: {_reason(exc)}") from exc
    except http.client.HTTPException as exc:
        raise FetchError(f"GET {url}: broken HTTP answer ({_reason(exc)})") from exc
    except ValueError as exc:
        raise FetchError(f"bad URL {url}: {_reason(exc)}") from exc


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
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                families.setdefault(_base_name(s.name), []).append((s.name, s.labels, s.value))
    except Exception as exc:  # the parser raises ValueError/TypeError/IndexError on garbage
        raise NotVllmError(
            f"{url or 'endpoint'}: /metrics is not Prometheus text ({first_line(exc)}); "
            "not a vLLM server?"
        ) from exc
    if not any(name.startswith("vllm:") for name in families):
        raise NotVllmError(f"{url or 'endpoint'}: /metrics has no vllm: metrics; not a vLLM server")
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
                    if not math.isnan(value):
                        engine(labels).gauges[column] = value
                break
    for column, names in COUNTERS.items():
        for name in names:
            if name in families:
                for sample_name, labels, value in families[name]:
                    if sample_name.endswith(_SKIP_SUFFIXES) or math.isnan(value):
                        continue
                    eng = engine(labels)
                    eng.counters[column] = eng.counters.get(column, 0.0) + value
                break
    for _, labels, _ in families.get(CACHE_INFO, []):
        engine(labels).cache_info = dict(labels)
    start = families.get("process_start_time_seconds")
    return Scrape(t_unix_s, engines, start[0][2] if start else None)


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


class CounterTracker:
    """Turns cumulative counters into per-interval deltas for one engine, surviving restarts."""

    def __init__(self) -> None:
        self._last: dict[str, float] | None = None

    @property
    def has_baseline(self) -> bool:
        """True once a first scrape has been seen."""
        return self._last is not None

    def update(self, counters: dict[str, float], restarted: bool = False) -> Deltas | None:
        """Deltas since the previous call (None on the first call, which only sets the baseline)."""
        last = self._last
        self._last = dict(counters)
        if last is None:
            return None
        reset = restarted or any(counters.get(k, v) < v for k, v in last.items())
        values: dict[str, float | None] = {}
        for column in COUNTERS:
            now = counters.get(column)
            if now is None:
                values[column] = None
            elif reset or column not in last:
                values[column] = now
            else:
                values[column] = now - last[column]
        return Deltas(values, reset)


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
