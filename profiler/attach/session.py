"""One attach run: probe the servers, then scrape, subscribe and sample until told to stop.

Every server's scrape loop runs on one event loop (``fleet.py``); every KV-event publisher's
subscriber on one thread (``KvEventHub``); NVML runs when a server is on this host. Failures are retried with backoff and recorded
as ``gaps``; a server that stays unreachable for ``give_up_s`` is *lost*: the session keeps what
was recorded, gets ``incomplete_reason`` and no ``ended_unix_s``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.attach import tier_metrics
from profiler.attach.feeds import COARSE_PERIOD_S, Feed, FeedSchedule, core_samples
from profiler.attach.fetch import FILTERED_PATH, fetch_async, filtered_url
from profiler.attach.fleet import Fleet
from profiler.attach.histograms import WANTED_NAMES, HistogramTracker, bucket_rows
from profiler.attach.kv_events import (
    KvEventHub,
    KvEventsConfigError,
    KvEventSubscriber,
    KvSource,
    discover,
    endpoint_host,
    is_loopback,
    parse_endpoint_arg,
)
from profiler.attach.metrics import (
    CounterTracker,
    EngineScrape,
    FetchError,
    NotVllmError,
    Scrape,
    cache_config,
    fetch_text,
    parse_metrics,
)
from profiler.attach.processes import (
    ProcessWatcher,
    is_local,
    listening_pid,
    start_gpu_sampling,
    stop_gpu_sampling,
    url_port,
)
from profiler.session.heartbeat import Heartbeat
from profiler.session.writer import SessionWriter, get_writer
from profiler.units import first_line

MAX_BACKOFF_S = 5.0
"""Longest wait between two retries of a failing server."""

GPU_INTERVAL_S = 0.1
"""NVML sampling period while attached."""

KV_SILENCE_S = 3.0
"""How long no KV-event batch may arrive after the server's prefix cache computed at least one
block of uncached tokens before that silence is recorded as a ``kv_events`` gap."""


class AttachError(Exception):
    """The attach cannot start; the message is one line for the user."""


@dataclass
class AttachOptions:
    """What ``kvscope attach`` was asked to do."""

    urls: list[str]
    session: Path
    interval_s: float = 0.25
    kv_events: list[str] = field(default_factory=list)
    """Empty: no KV events; ``["auto"]``: discover for every URL; else one endpoint per URL."""
    pids: list[int] = field(default_factory=list)
    duration_s: float | None = None
    give_up_s: float = 30.0
    """A server unreachable for this long is given up (the session is marked incomplete)."""
    timeout_s: float = 2.0
    """Deadline of one whole HTTP request (connect, headers and body)."""
    feeds: list[Feed] = field(default_factory=list)
    """Consumers of /metrics besides the ``steps`` rows, each at its own period (``feeds.py``)."""


@dataclass
class ServerInfo:
    """What probing a server found."""

    url: str
    version: str | None
    first: Scrape


@dataclass
class AttachResult:
    """Summary of a finished attach."""

    intervals: int
    kv_event_rows: int
    gaps: int
    lost: list[str]
    incomplete: list[str] = field(default_factory=list)
    """Why the session does not cover the requested window (empty: it does; marked complete)."""


def normalize_url(url: str) -> str:
    """``http://host:port`` without a trailing slash or a ``/metrics`` suffix."""
    url = url.strip().rstrip("/")
    if url.endswith("/metrics"):
        url = url[: -len("/metrics")]
    if not url.startswith(("http://", "https://")):
        raise AttachError(f"{url!r}: server URL must start with http:// or https://")
    return url


def probe_server(url: str, timeout_s: float) -> ServerInfo:
    """Check that ``url`` is a reachable vLLM server; AttachError with one line otherwise."""
    try:
        text = fetch_text(url + "/metrics", timeout_s)
    except FetchError as exc:
        if "HTTP 404" in str(exc):
            raise AttachError(f"{url}: no /metrics endpoint (HTTP 404); not a vLLM server") from exc
        raise AttachError(str(exc)) from exc
    try:
        first = parse_metrics(text, time.time(), url)
    except NotVllmError as exc:
        raise AttachError(str(exc)) from exc
    version = None
    try:
        version = json.loads(fetch_text(url + "/version", timeout_s)).get("version")
    except (FetchError, ValueError, AttributeError):
        pass
    return ServerInfo(url, str(version) if version is not None else None, first)


CORE_FEED = "steps"
LATENCY_FEED = "latency_buckets"
"""The latency histograms (``latency_buckets`` rows, made in ``record`` from the parsed scrape):
cumulative, so asked for every ``COARSE_PERIOD_S``; a scrape without them leaves the histogram
tracker's last values, and the next one that has them covers the interval."""
LATENCY_SAMPLES = tuple(sorted(n for n in WANTED_NAMES if n.endswith(("_bucket", "_count", "_sum"))))
"""Name of the attach's own feed (gauges and counters into ``steps`` rows, every tick)."""
TIERS_FEED = "kv_tiers"
"""KV tiers and block residency (``tier_samples`` / ``kv_residency_hist`` rows, made in ``record``
from the parsed scrape): cumulative, so asked for every ``COARSE_PERIOD_S`` like the latency
histograms; the rows of a scrape without them are made from the next one that has them."""


class ServerAttachment:
    """Scrapes one server (a coroutine on the fleet's event loop) and writes engines/steps/gaps
    rows; ``record`` turns one parsed scrape into rows, other feeds get the body (``feeds.py``)."""

    def __init__(self, writer: SessionWriter, info: ServerInfo, opts: AttachOptions,
                 pid: int | None, seen_pids: set[int] | None = None,
                 feeds: tuple[Feed, ...] = ()) -> None:
        self.writer = writer
        self.info = info
        self.url = info.url
        self.opts = opts
        self.pid = pid
        self.engine_ids: dict[str, int] = {}
        self.trackers: dict[str, CounterTracker] = {}
        self.hist_trackers: dict[str, HistogramTracker] = {}
        self.tier_trackers: dict[str, tier_metrics.TierTracker] = {}
        self.intervals = 0
        self.gaps = 0
        self.lost_reason: str | None = None
        self.last_ok_unix_s = info.first.t_unix_s
        """When the last good scrape was taken."""
        self.failure: str | None = None
        """Why scrapes fail right now (None while they succeed)."""
        self._reported: set[tuple[str, str]] = set()
        self.miss_tokens: dict[str, float] = {}
        """Per engine label: prefix-cache lookups that missed (queries - hits), summed so far."""
        self.miss_seen_unix_s: dict[str, float] = {}
        """Per engine label: time of the scrape before the one that last saw misses grow."""
        self._prev_t_unix_s = info.first.t_unix_s
        self._lock = threading.Lock()
        self._start_unix_s = info.first.process_start_unix_s
        self._watcher = ProcessWatcher(writer, pid, None, seen_pids) if pid else None
        self._running = True
        """Until its scrape loop has ended (set before the loop starts: nothing to wait for)."""
        self.scrapes = 0
        """/metrics answers recorded (the probe not counted)."""
        self.filtering = True
        """Ask for only the due feeds' samples (``?name[]=``); off once the server refuses it."""
        self.schedule = FeedSchedule([Feed(CORE_FEED, core_samples(), self._no_op),
                                      Feed(LATENCY_FEED, LATENCY_SAMPLES, self._no_op, COARSE_PERIOD_S),
                                      Feed(TIERS_FEED, tier_metrics.SAMPLES, self._no_op,
                                           COARSE_PERIOD_S),
                                      *feeds])

    def engine_id(self, label: str, eng: EngineScrape | None = None) -> int:
        """Session engine id of this server's engine ``label`` (its row is created on first use)."""
        with self._lock:
            eid = self.engine_ids.get(label)
            if eid is not None:
                return eid
            eng = eng or self.info.first.engines.get(label) or EngineScrape(label)
            row: dict[str, object] = {
                "pid": self.pid, "engine_index": int(label) if label.isdigit() else None,
                "label": self.url, "source": "scrape", "created_unix_s": time.time(),
                "vllm_version": self.info.version, "model": eng.model,
                **cache_config(eng.cache_info),
            }
            cols = ", ".join(row)
            eid = self.writer.execute_now(
                f"INSERT INTO engines ({cols}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            assert eid is not None
            self.engine_ids[label] = eid
            if self._watcher is not None and self._watcher.engine_id is None:
                self._watcher.engine_id = eid
            return eid

    def engine_id_for_rank(self, rank: int) -> int:
        """Engine id of data-parallel rank ``rank`` (vLLM labels engines by DP index)."""
        return self.engine_id(str(rank))

    def record(self, scrape: Scrape) -> None:
        """Append one steps row per engine: gauges now, counter deltas since the last scrape."""
        restarted = (
            self._start_unix_s is not None and scrape.process_start_unix_s is not None
            and scrape.process_start_unix_s != self._start_unix_s
        )
        if scrape.process_start_unix_s is not None:
            self._start_unix_s = scrape.process_start_unix_s
        for (column, why), text in scrape.problems.items():
            if (column, why) not in self._reported:  # one event per kind of impossible value
                self._reported.add((column, why))
                msg = f"{self.url}: {text}; stored as NULL (not reported again)"
                print(f"kvscope: {msg}", file=sys.stderr)
                self.writer.event("bad_value", msg, self._any_engine(), column=column, why=why)
        for label, eng in scrape.engines.items():
            eid = self.engine_id(label, eng)
            deltas = self.trackers.setdefault(label, CounterTracker()).update(
                eng.counters, restarted, eng.bad, restart_known=scrape.process_start_unix_s is not None)
            d = deltas.values if deltas else {}
            for column in deltas.backwards if deltas else ():
                if (column, "backwards") not in self._reported:
                    self._reported.add((column, "backwards"))
                    msg = (f"{self.url}: counter {column} went down while the server did not "
                           "restart; that interval stored as NULL (not reported again)")
                    print(f"kvscope: {msg}", file=sys.stderr)
                    self.writer.event("bad_value", msg, eid, column=column, why="backwards")
            if deltas is not None and deltas.reset:
                self.writer.event("server_restart", f"{self.url}: counters restarted (server restart?)",
                                  eid)
            miss = (d.get("prefix_queries_tokens") or 0.0) - (d.get("prefix_hits_tokens") or 0.0)
            if miss > 0:
                self.miss_tokens[label] = self.miss_tokens.get(label, 0.0) + miss
                self.miss_seen_unix_s[label] = self._prev_t_unix_s
            g = eng.gauges
            self.writer.append("steps", (
                eid, scrape.t_unix_s, _int(g.get("running")), _int(g.get("waiting")),
                g.get("kv_usage_frac"), _int(d.get("prefix_queries_tokens")),
                _int(d.get("prefix_hits_tokens")), None, None, _int(d.get("preemptions")),
                _int(d.get("prompt_tokens")), _int(d.get("generation_tokens")),
                _int(d.get("finished")), 1,
            ))
            latency = self.hist_trackers.setdefault(label, HistogramTracker()).update(
                eng.histograms, deltas is not None and deltas.reset)
            for row in bucket_rows(eid, scrape.t_unix_s, latency or ()):
                self.writer.append("latency_buckets", row)
            if deltas is not None:
                self.intervals += 1
        for label, values in tier_metrics.tier_values(scrape.extra).items():
            tier_rows, hist_rows = self.tier_trackers.setdefault(
                label, tier_metrics.TierTracker()).rows(values, self.engine_id(label),
                                                        scrape.t_unix_s, restarted)
            for row in tier_rows:
                self.writer.append("tier_samples", row)
            for hrow in hist_rows:
                self.writer.append("kv_residency_hist", hrow)
        self._prev_t_unix_s = scrape.t_unix_s

    @staticmethod
    def _no_op(_server: object, _text: str, _t_unix_s: float) -> None:
        """The core feed is recorded by ``record`` itself."""

    def block_size(self, label: str) -> int:
        """The engine's KV block size in tokens (16 when the server does not say)."""
        eng = self.info.first.engines.get(label) or next(iter(self.info.first.engines.values()), None)
        size = cache_config(eng.cache_info).get("block_size") if eng else None
        return int(size) if isinstance(size, int) and size > 0 else 16

    @property
    def running(self) -> bool:
        """True while this server's scrape loop runs."""
        return self._running

    async def run(self, client: Any, fleet: Fleet, stop: threading.Event,
                  phase_s: float = 0.0) -> None:
        """The scrape loop (on the fleet's event loop); whatever escapes it becomes a gap and a
        lost server, never silence."""
        try:
            await self._loop(client, fleet, stop, phase_s)
        except BaseException as exc:
            reason = f"scrape loop stopped: {type(exc).__name__}: {first_line(exc)}"
            self.lost_reason = f"lost {self.url} ({reason})"
            self._gap(self.last_ok_unix_s, time.time(), reason)
            self.writer.event("error", self.lost_reason, self._any_engine(),
                              traceback=traceback.format_exc())
            print(f"kvscope: {self.lost_reason}", file=sys.stderr)
        finally:
            self._running = False

    async def _scrape(self, client: Any, final: bool = False) -> None:
        """One tick: ask for the due feeds' samples, record the steps rows, feed the others. The
        ``final`` scrape (the window's end) serves every feed, so coarse ones cover the window too."""
        now = time.monotonic()
        due = list(self.schedule.feeds) if final else self.schedule.due(now)
        url = self.url + "/metrics"
        text = None
        refused = False
        if self.filtering:
            samples = FeedSchedule.samples(due)
            status, body = await fetch_async(client, filtered_url(self.url + FILTERED_PATH, samples),
                                             self.opts.timeout_s)
            if status == 200 and "vllm:" in body:
                text = body
            else:
                refused = True
        if text is None:
            status, text = await fetch_async(client, url, self.opts.timeout_s)
            if status >= 400:
                raise FetchError(f"GET {url} returned HTTP {status}")
        t_unix_s = time.time()
        scrape = parse_metrics(text, t_unix_s, self.url)
        if refused:  # the whole text works where the filtered one did not: keep to it
            self.filtering = False
        self.scrapes += 1
        self.record(scrape)
        for feed in due:
            if feed.name != CORE_FEED:
                feed.consume(self, text, t_unix_s)
        self.schedule.served(due, now)
        self.last_ok_unix_s = t_unix_s

    async def _loop(self, client: Any, fleet: Fleet, stop: threading.Event, phase_s: float) -> None:
        interval = self.opts.interval_s
        next_s = time.monotonic() + interval + phase_s
        failing_since: float | None = None
        failure = first_failure = ""
        retries = 0
        internal_reported = False
        await fleet.sleep(interval + phase_s)
        while True:
            stopping = stop.is_set()
            if stopping and failing_since is not None:  # no last try: it would only delay the end
                self._gap(self.last_ok_unix_s, time.time(), failure)
                return
            try:
                ok_before = self.last_ok_unix_s
                await self._scrape(client, final=stopping)
                if failing_since is not None:
                    self._gap(ok_before, self.last_ok_unix_s, failure)
                    print(f"kvscope: {self.url}: reachable again", file=sys.stderr)
                    failing_since, retries, self.failure = None, 0, None
            except Exception as exc:  # noqa: BLE001 (FetchError, NotVllmError, or a kvscope bug)
                if isinstance(exc, (FetchError, NotVllmError)):
                    failure = str(exc)
                else:  # a bug in kvscope: a gap and one event, never a dead loop
                    failure = f"{self.url}: internal error ({type(exc).__name__}: {first_line(exc)})"
                    if not internal_reported:
                        internal_reported = True
                        self.writer.event("error", failure, self._any_engine(),
                                          traceback=traceback.format_exc())
                if failing_since is None:
                    failing_since, first_failure = time.monotonic(), failure
                    print(f"kvscope: {failure}; retrying", file=sys.stderr)
                    self.writer.event("scrape_error", failure, self._any_engine())
                # the stretch's first failure is its cause (a later timeout of a retry is not)
                elif failure != first_failure and not failure.startswith(first_failure):
                    failure = f"{first_failure} (last try: {failure})"
                self.failure = failure
                if time.monotonic() - failing_since >= self.opts.give_up_s:
                    self._lose(self.last_ok_unix_s, failure)
                    return
                if stopping:
                    self._gap(self.last_ok_unix_s, time.time(), failure)
                    return
                retries += 1
                await fleet.sleep(min(interval * 2 ** min(retries, 8), MAX_BACKOFF_S))
                next_s = time.monotonic() + interval
                continue
            if stopping:
                return
            if self._watcher is not None:
                self._watcher.poll()
            next_s += interval
            delay = next_s - time.monotonic()
            if delay < 0:  # fell behind: skip the missed ticks instead of bursting
                next_s, delay = time.monotonic(), 0.0
            await fleet.sleep(delay)

    def heartbeat_state(self) -> dict[str, object]:
        """This server's line of the session heartbeat (``profiler.session.heartbeat``)."""
        state = "lost" if self.lost_reason else "failing" if self.failure else "ok"
        return {"url": self.url, "state": state, "last_ok_unix_s": self.last_ok_unix_s,
                "reason": self.lost_reason or self.failure,
                "interval_s": self.opts.interval_s}

    def _any_engine(self) -> int | None:
        return next(iter(self.engine_ids.values()), None)

    def _gap(self, t_start: float, t_end: float, reason: str) -> None:
        self.gaps += 1
        for eid in self.engine_ids.values() or [None]:
            self.writer.append("gaps", (eid, t_start, t_end, "metrics", reason))
        self.writer.flush()

    def _lose(self, last_ok_unix_s: float, failure: str) -> None:
        self.lost_reason = f"lost {self.url} ({failure}; gave up after {self.opts.give_up_s:g} s)"
        self._gap(last_ok_unix_s, time.time(), failure)
        self.writer.event("server_lost", self.lost_reason, self._any_engine())
        print(f"kvscope: {self.lost_reason}", file=sys.stderr)


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def kv_sources(opts: AttachOptions, url: str, index: int) -> list[KvSource]:
    """KV-event publishers to subscribe to for the ``index``-th server."""
    if not opts.kv_events:
        return []
    try:
        if opts.kv_events == ["auto"]:
            return _on_this_host(discover(url, opts.timeout_s), url)
        if len(opts.kv_events) != len(opts.urls):
            raise AttachError(
                f"got {len(opts.kv_events)} --kv-events endpoints for {len(opts.urls)} servers; "
                "pass one per URL, in order, or --kv-events auto"
            )
        arg = opts.kv_events[index]
        if arg == "auto":
            return _on_this_host(discover(url, opts.timeout_s), url)
        given = parse_endpoint_arg(arg)
        return _on_this_host([_match_server(given, url, opts.timeout_s)], url)
    except KvEventsConfigError as exc:
        raise AttachError(str(exc)) from exc


def _match_server(given: KvSource, url: str, timeout_s: float) -> KvSource:
    """``given`` as the server itself configured it, when it says (GET /kv_event_sources): an
    endpoint its publisher connects to is one this subscriber must bind."""
    try:
        for src in discover(url, timeout_s):
            if src.bind and src.endpoint == given.endpoint.replace("//localhost:", "//127.0.0.1:"):
                return KvSource(src.endpoint, given.replay_endpoint or src.replay_endpoint,
                                src.dp_rank, bind=True)
    except KvEventsConfigError:
        pass  # an older vLLM without discovery: connect, as asked
    return given


def _on_this_host(sources: list[KvSource], url: str) -> list[KvSource]:
    """Refuse, in one line, what cannot work: a publisher connecting to its own loopback while
    kvscope runs on another host."""
    for src in sources:
        if src.bind and is_loopback(endpoint_host(src.endpoint)) and not is_local(url):
            raise AttachError(
                f"{url} sends KV events by connecting to {src.endpoint}, its own loopback: run "
                "kvscope attach on that host, or give the server a wildcard endpoint "
                "(tcp://*:PORT) that kvscope can connect to"
            )
    return sources


class KvWatchdog:
    """Records a ``kv_events`` gap while no batch arrives although the server's prefix cache
    computed at least one block of uncached tokens (so KV events were due) for KV_SILENCE_S."""

    def __init__(self, writer: SessionWriter, server: ServerAttachment,
                 sub: KvEventSubscriber) -> None:
        self.writer, self.server, self.sub = writer, server, sub
        self.label = str(sub.source.dp_rank)
        self._batches = 0
        self._base = 0.0
        self._since_unix_s = time.time()
        self._gap_start: float | None = None
        self._gap_misses = 0.0
        self._first_seen: float | None = None
        self._told = False
        self.gaps = 0

    def _misses(self) -> float:
        m = self.server.miss_tokens
        return m.get(self.label, sum(m.values()) if self.label not in self.server.engine_ids else 0.0)

    def check(self) -> None:
        """Called periodically: open or close the silence gap."""
        misses = self._misses()
        if self.sub.stats.batches != self._batches:
            self._batches = self.sub.stats.batches
            self._base = misses
            self._since_unix_s = self.sub.last_batch_unix_s or time.time()
            self._first_seen = None
            self.close(self._since_unix_s)
            return
        moved = misses - self._base
        if moved > 0 and self._first_seen is None:  # the first misses since the last batch
            self._first_seen = self.server.miss_seen_unix_s.get(self.label) or max(
                self.server.miss_seen_unix_s.values(), default=time.time())
        if self._gap_start is not None or self._first_seen is None:
            self._gap_misses = moved
            return
        if (moved >= self.server.block_size(self.label)
                and time.time() - self._first_seen >= KV_SILENCE_S):
            self._gap_start = max(self._first_seen, self._since_unix_s)
            self._gap_misses = moved
            if not self._told:
                self._told = True
                msg = (f"{self.server.url}: no KV-event batch from {self.sub.source.endpoint} for "
                       f"{time.time() - self._gap_start:.0f} s while the server computed "
                       f"{moved:.0f} uncached prompt tokens; recording a kv_events gap"
                       + (" (is the endpoint the server's?)" if not self.sub.stats.batches else ""))
                print(f"kvscope: {msg}", file=sys.stderr)
                self.writer.event("kv_events_silent", msg, self._engine_id())

    def close(self, t_end_unix_s: float) -> None:
        """End the open silence gap (a batch arrived, or the attach ends)."""
        if self._gap_start is None:
            return
        self.gaps += 1
        self.writer.append("gaps", (
            self._engine_id(), self._gap_start, t_end_unix_s, "kv_events",
            f"no KV-event batch from {self.sub.source.endpoint} while the server's prefix cache "
            f"computed {self._gap_misses:.0f} uncached tokens",
        ))
        self.writer.flush()
        self._gap_start = None

    def _engine_id(self) -> int | None:
        try:
            return self.server.engine_id_for_rank(self.sub.source.dp_rank)
        except Exception:  # noqa: BLE001 (the gap matters more than its engine)
            return None


def run_attach(opts: AttachOptions, stop: threading.Event | None = None) -> AttachResult:
    """Attach to ``opts.urls`` and record until ``stop`` is set, the duration ends or all are lost."""
    stop = stop or threading.Event()
    opts.urls = [normalize_url(u) for u in opts.urls]
    if len(set(opts.urls)) != len(opts.urls):
        raise AttachError("the same server URL is given twice")
    if opts.pids and len(opts.pids) != len(opts.urls):
        raise AttachError(f"got {len(opts.pids)} --pid values for {len(opts.urls)} servers; "
                          "pass one per URL, in order")
    if opts.interval_s < 0.05:
        raise AttachError("--interval-s must be at least 0.05")
    if opts.session.exists():
        raise AttachError(f"{opts.session} already exists; pick a new --session path")
    infos = [probe_server(u, opts.timeout_s) for u in opts.urls]
    sources = [kv_sources(opts, u, i) for i, u in enumerate(opts.urls)]
    opts.session.parent.mkdir(parents=True, exist_ok=True)
    writer = get_writer(opts.session)
    _write_meta(writer, infos)
    writer.append("processes", (os.getpid(), "attach", None, None, socket.gethostname(), time.time()))
    servers = []
    seen_pids: set[int] = {os.getpid()}
    for i, info in enumerate(infos):
        pid = opts.pids[i] if opts.pids else (
            listening_pid(url_port(info.url)) if is_local(info.url) else None
        )
        server = ServerAttachment(writer, info, opts, pid, seen_pids, tuple(opts.feeds))
        server.record(info.first)  # baseline: gauges now, counters from here on
        servers.append(server)
    local = [s for s in servers if s.pid is not None]
    gpu_on = start_gpu_sampling(writer, GPU_INTERVAL_S) if local else False
    if not local:
        writer.event("nvml_off", "GPU memory sampling off: no attached server runs on this host")
    subscribers = []
    watchdogs = []
    for server, srcs in zip(servers, sources, strict=True):
        for src in srcs:
            sub = KvEventSubscriber(writer, src, server.engine_id_for_rank, server.url)
            subscribers.append(sub)
            watchdogs.append(KvWatchdog(writer, server, sub))
    hub = KvEventHub(subscribers)
    hub.start()
    for server in servers:
        if server._watcher is not None:
            server._watcher.poll()
    # one event loop for every server; their ticks spread evenly over the interval
    fleet = Fleet([_job(server, stop, i * opts.interval_s / len(servers))
                   for i, server in enumerate(servers)])
    fleet.start()
    writer.event("attach_start", f"attached to {len(servers)} server(s)",
                 urls=opts.urls, kv_endpoints=[s.source.endpoint for s in subscribers])
    for server, srcs in zip(servers, sources, strict=True):
        print(_describe(server, srcs, opts.session), file=sys.stderr)
    heartbeat = Heartbeat(writer, "attach",
                          lambda: {"servers": [s.heartbeat_state() for s in servers]}).start()
    t0 = time.monotonic()
    deadline = None if opts.duration_s is None else t0 + opts.duration_s
    ended_by = "stop"
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                ended_by = "duration"
                break
            if not fleet.alive or not any(s.running for s in servers):
                ended_by = "servers"
                break
            for dog in watchdogs:
                dog.check()
            stop.wait(0.1)
    finally:
        stop.set()
        fleet.stop()
        fleet.join(opts.timeout_s + 5.0)
        heartbeat.stop()
        hub.stop()
        for dog in watchdogs:
            dog.check()
            dog.close(time.time())
        if gpu_on:
            stop_gpu_sampling()
        incomplete = _coverage(servers, ended_by, time.monotonic() - t0, opts.duration_s)
        lost = [s.lost_reason for s in servers if s.lost_reason]
        writer.flush()
        if incomplete:
            writer.set_meta(incomplete_reason="; ".join(incomplete))
        else:
            writer.set_meta(ended_unix_s=time.time(), exit_code=0)
        writer.close()
    return AttachResult(
        intervals=sum(s.intervals for s in servers),
        kv_event_rows=sum(sub.stats.rows for sub in subscribers),
        gaps=sum(s.gaps for s in servers) + sum(sub.stats.lost_batches > 0 for sub in subscribers)
        + sum(dog.gaps for dog in watchdogs),
        lost=lost,
        incomplete=incomplete,
    )


def _job(server: ServerAttachment, stop: threading.Event, phase_s: float) -> Any:
    async def job(client: Any, fleet: Fleet) -> None:
        await server.run(client, fleet, stop, phase_s)
    return job


def _coverage(servers: list[ServerAttachment], ended_by: str, elapsed_s: float,
              duration_s: float | None) -> list[str]:
    """Why the session does not cover the requested window (--duration-s, or until stopped)."""
    out = []
    now = time.time()
    for server in servers:
        if server.lost_reason:
            out.append(server.lost_reason)
        elif server.running:  # its last scrape outlived the join: never seen with deadlines
            reason = "scrape did not finish when the attach ended"
            server._gap(server.last_ok_unix_s, now, reason)
            out.append(f"no data from {server.url} since {now - server.last_ok_unix_s:.1f} s "
                       f"before the end ({reason})")
        elif server.failure is not None:
            out.append(f"no data from {server.url} for the last {now - server.last_ok_unix_s:.1f} s "
                       f"of the window ({server.failure})")
    if ended_by == "servers" and not out:
        out.append("every scrape thread ended early")
    if ended_by == "servers" and duration_s is not None:
        out.append(f"attach ended after {elapsed_s:.1f} s of the {duration_s:g} s asked for")
    return out


def _write_meta(writer: SessionWriter, infos: list[ServerInfo]) -> None:
    from profiler import __version__

    first = infos[0]
    model = next((e.model for e in first.first.engines.values() if e.model), None)
    writer.set_meta_default(
        started_unix_s=min(i.first.t_unix_s for i in infos), host=socket.gethostname(),
        kvscope_version=__version__,
        command=list(sys.argv), vllm_version=first.version, model=model,
        attach_urls=[i.url for i in infos],
    )


def _describe(server: ServerAttachment, sources: list[KvSource], path: Path) -> str:
    engines = server.info.first.engines
    eng = next(iter(engines.values()), None)
    cfg = cache_config(eng.cache_info) if eng else {}
    blocks = (f", {cfg['num_gpu_blocks']} KV blocks x {cfg['block_size']} tokens"
              if cfg.get("num_gpu_blocks") else "")
    kv = ", KV events from " + " ".join(
        s.endpoint + (" (listening: the server connects)" if s.bind else "") for s in sources
    ) if sources else ""
    pid = f", pid {server.pid}" if server.pid else ""
    return (f"kvscope: attached to {server.url} (vLLM {server.info.version or '?'}, "
            f"model {eng.model if eng else '?'}, {len(engines)} engine(s){blocks}{pid}){kv}; "
            f"writing {path}; Ctrl-C to stop")
