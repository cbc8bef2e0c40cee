"""KV-cache event streams: endpoint discovery, one ZMQ subscriber thread for all, replay of missed batches.

vLLM's ZmqEventPublisher sends ``(topic, seq, payload)`` on a PUB socket and serves past batches
on a ROUTER "replay" socket: a client sends ``(b"", start_seq)`` and gets every buffered batch with
``seq >= start_seq`` followed by an end marker (seq -1). The subscriber keeps the next expected
sequence number, fills holes through the replay socket, and records in the ``gaps`` table what
could not be recovered. On start it also replays the publisher's buffer from seq 0 (rows marked
``history``) so that the blocks already resident when kvscope attached are known.

Who binds: vLLM's PUB socket binds only when its endpoint has a wildcard (``*``, ``::``) or is
``ipc://``/``inproc://``; for a concrete ``tcp://HOST:PORT`` it *connects* there and expects the
subscriber to bind it (which only works on that host). The replay ROUTER socket always binds.
``KvSource.bind`` says which side this subscriber plays.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

from profiler.attach.kv_decode import (
    END_SEQ,
    KvBatch,
    KvDecodeError,
    decode_frame,
    decode_payload,
    decode_seq,
    event_rows,
)
from profiler.attach.metrics import FetchError, fetch_text
from profiler.session.writer import SessionWriter

POLL_S = 0.1
"""How long the subscriber waits for a frame before checking for stop."""
REPLAY_TIMEOUT_S = 3.0
"""How long a replay request may stay silent before it is given up."""


class KvEventsConfigError(Exception):
    """KV events cannot be subscribed as asked; the message is one line."""


@dataclass(frozen=True)
class KvSource:
    """One publisher (one per data-parallel rank) of one server."""

    endpoint: str
    replay_endpoint: str | None
    dp_rank: int = 0
    bind: bool = False
    """The server's publisher connects to ``endpoint``: this subscriber must bind (listen) there."""


@dataclass
class SubscriberStats:
    """Counts kept by one subscriber (written as an event when it stops)."""

    batches: int = 0
    rows: int = 0
    replayed_batches: int = 0
    history_batches: int = 0
    duplicates: int = 0
    malformed: int = 0
    unknown_events: int = 0
    lost_batches: int = 0
    publisher_restarts: int = 0


def parse_endpoint_arg(text: str) -> KvSource:
    """``tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT]`` from the command line."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(parts) <= 2 or not all(p.startswith(("tcp://", "ipc://")) for p in parts):
        raise KvEventsConfigError(
            f"--kv-events {text!r}: expected auto or tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT]"
        )
    return KvSource(parts[0], parts[1] if len(parts) == 2 else None)


def vllm_binds(endpoint: str) -> bool:
    """Whether vLLM's ZmqEventPublisher binds its PUB socket to ``endpoint`` (else it connects)."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def endpoint_host(endpoint: str) -> str:
    """The host part of ``tcp://HOST:PORT`` (brackets removed); empty for other transports."""
    if not endpoint.startswith("tcp://"):
        return ""
    return endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bindable(endpoint: str) -> str:
    """A concrete endpoint the server connects to, as this host binds it (``localhost`` is
    spelled as an address: ZMQ binds interfaces and addresses, not host names)."""
    host = endpoint_host(endpoint)
    if host == "localhost":
        return endpoint.replace("tcp://localhost:", "tcp://127.0.0.1:", 1)
    return endpoint


def source_for(endpoint: str, replay: str | None, server_url: str, rank: int = 0) -> KvSource:
    """The subscriber side of a server's ``--kv-events-config`` endpoints (see module doc)."""
    if vllm_binds(endpoint):
        main, bind = connectable(endpoint, server_url), False
    else:
        main, bind = bindable(endpoint), True
    return KvSource(main, connectable(replay, server_url) if replay else None, rank, bind)


def connectable(endpoint: str, server_url: str) -> str:
    """Turn a bind address (``tcp://*:5557``) into one this host can connect to."""
    if endpoint.startswith("inproc://"):
        raise KvEventsConfigError(
            f"{server_url}: KV events go to {endpoint}, which only the server process can read; "
            "restart it with a tcp:// endpoint"
        )
    if not endpoint.startswith("tcp://"):
        return endpoint
    rest = endpoint[len("tcp://"):]
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::", ""):
        host = urlsplit(server_url).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
    return f"tcp://{host}:{port}"


def discover(server_url: str, timeout_s: float) -> list[KvSource]:
    """The server's KV-event publishers from ``GET /kv_event_sources`` (vLLM 0.32+)."""
    url = server_url + "/kv_event_sources"
    try:
        body = fetch_text(url, timeout_s)
    except FetchError as exc:
        if "HTTP 404" in str(exc):
            raise KvEventsConfigError(
                f"{server_url}: KV-event discovery is unavailable (no GET /kv_event_sources in this "
                "vLLM); pass --kv-events tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT] with the "
                "endpoint of the server's --kv-events-config"
            ) from exc
        raise KvEventsConfigError(str(exc)) from exc
    try:
        sources = json.loads(body)
        if not isinstance(sources, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise KvEventsConfigError(f"{url}: unexpected answer ({exc})") from exc
    out = []
    for rank, cfg in sorted(sources.items(), key=lambda kv: str(kv[0])):
        if not isinstance(cfg, dict) or not cfg.get("enable_kv_cache_events"):
            continue
        if cfg.get("publisher") != "zmq" or not cfg.get("endpoint"):
            continue
        replay = cfg.get("replay_endpoint")
        out.append(source_for(str(cfg["endpoint"]), str(replay) if replay else None, server_url,
                              int(rank) if str(rank).isdigit() else 0))
    if not out:
        raise KvEventsConfigError(
            f"{server_url} publishes no KV events; start it with --kv-events-config "
            "'{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", "
            "\"endpoint\": \"tcp://*:5557\", \"replay_endpoint\": \"tcp://*:5558\"}'"
        )
    return out


class KvEventSubscriber:
    """One publisher's stream: appends its ``kv_events`` rows to the session (sequence kept,
    holes replayed, gaps recorded). Its socket is served by a ``KvEventHub``."""

    def __init__(
        self,
        writer: SessionWriter,
        source: KvSource,
        engine_id_for: Callable[[int], int | None],
        label: str,
        history: bool = True,
    ) -> None:
        self.writer = writer
        self.source = source
        self.engine_id_for = engine_id_for
        self.label = label
        self.history = history
        self.stats = SubscriberStats()
        self._ctx: zmq.Context | None = None
        self._expected: int | None = None
        self._last_ts: float | None = None
        self.setup_error: str | None = None
        """Why the socket could not be bound or connected (None: it was)."""
        self.last_batch_unix_s: float | None = None
        """When the last batch arrived (this host's clock)."""

    def open(self, ctx: zmq.Context) -> zmq.Socket | None:
        """Its SUB socket, bound or connected (None, with ``setup_error`` set, when it cannot be)."""
        self._ctx = ctx
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            if self.source.bind:
                sub.bind(self.source.endpoint)
            else:
                sub.connect(self.source.endpoint)
        except zmq.ZMQError as exc:
            verb = "listen on" if self.source.bind else "connect to"
            self.setup_error = (f"cannot {verb} {self.source.endpoint} for KV events ({exc}); "
                                "no KV events in this session")
            sub.close(linger=0)
            return None
        return sub

    def said_setup(self) -> None:
        """Tell (stderr and an event) why the socket could not be set up, if it could not."""
        if self.setup_error:
            print(f"kvscope: {self.label}: {self.setup_error}", file=sys.stderr)
            self.writer.event("kv_event_error", self.setup_error, self.engine_id_for(self.source.dp_rank))

    def receive(self, parts: list[bytes]) -> None:
        """One frame from its socket."""
        try:
            batch = decode_frame(parts)
        except KvDecodeError as exc:
            self._malformed(str(exc))
            return
        self._on_batch(batch, "live")

    def summarize(self) -> None:
        """Record its counts (an event), once the hub stopped."""
        s = self.stats
        self.writer.event(
            "kv_events_summary",
            f"{self.source.endpoint}: {s.batches} batches, {s.rows} rows, {s.lost_batches} lost, "
            f"{s.malformed} malformed",
            self.engine_id_for(self.source.dp_rank), **vars(s),
        )

    def _on_batch(self, batch: KvBatch, source: str) -> None:
        if self._expected is None:
            if batch.seq > 0 and self.history and self.source.replay_endpoint:
                self._fill_history(batch)
            elif batch.seq > 0:
                self.writer.event(
                    "kv_events_history",
                    f"{self.label}: attached at KV-event batch {batch.seq}; earlier batches not replayed",
                    self._engine_id(batch),
                )
            self._expected = batch.seq
        if batch.seq < self._expected:
            if self._last_ts is not None and batch.ts_unix_s > self._last_ts and source == "live":
                self._restarted(batch)
            else:
                self.stats.duplicates += 1
                return
        if batch.seq > self._expected:
            self._fill_gap(batch)
        self._write(batch, source)
        self.last_batch_unix_s = time.time()

    def _engine_id(self, batch: KvBatch) -> int | None:
        return self.engine_id_for(batch.dp_rank if batch.dp_rank is not None else self.source.dp_rank)

    def _write(self, batch: KvBatch, source: str) -> None:
        engine_id = self._engine_id(batch)
        for row in event_rows(batch, engine_id, source):
            self.writer.append("kv_events", row)
            self.stats.rows += 1
        self.stats.batches += 1
        self.stats.unknown_events += batch.unknown_events
        if source == "replay":
            self.stats.replayed_batches += 1
        elif source == "history":
            self.stats.history_batches += 1
        self._expected = batch.seq + 1
        self._last_ts = max(self._last_ts or batch.ts_unix_s, batch.ts_unix_s)

    def _fill_history(self, first_live: KvBatch) -> None:
        """Replay what the publisher still buffers from before kvscope attached."""
        got, _ = self._replay(0, first_live.seq)
        for b in got:
            self._write(b, "history")
        oldest = got[0].seq if got else first_live.seq
        if oldest > 0:
            self.writer.event(
                "kv_events_history",
                f"{self.label}: replay buffer starts at KV-event batch {oldest}; "
                f"{oldest} earlier batches are not in the session",
                self._engine_id(first_live),
            )

    def _fill_gap(self, next_batch: KvBatch) -> None:
        """Replay the batches missing before ``next_batch``; record a gap for what is gone."""
        assert self._expected is not None
        why = "the server has no replay endpoint"
        got: list[KvBatch] = []
        if self.source.replay_endpoint:
            got, why = self._replay(self._expected, next_batch.seq)
        for b in got:
            if b.seq < self._expected:
                continue
            if b.seq > self._expected:
                self._gap(self._expected, b, why)
            self._write(b, "replay")
        if self._expected < next_batch.seq:
            self._gap(self._expected, next_batch, why)
            self._expected = next_batch.seq

    def _gap(self, first_missing: int, next_batch: KvBatch, why: str) -> None:
        self.stats.lost_batches += next_batch.seq - first_missing
        t_start = self._last_ts if self._last_ts is not None else next_batch.ts_unix_s
        self.writer.append("gaps", (
            self._engine_id(next_batch), t_start, next_batch.ts_unix_s, "kv_events",
            f"KV-event batches {first_missing}..{next_batch.seq - 1} lost ({why})",
        ))
        self.writer.flush()

    def _replay(self, start: int, stop: int) -> tuple[list[KvBatch], str]:
        """Ask the replay socket for batches ``start <= seq < stop``; returns them and a reason."""
        assert self.source.replay_endpoint is not None
        if self._ctx is None:  # batches handed over directly (tests): a context of its own
            self._ctx = zmq.Context.instance()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        out: list[KvBatch] = []
        why = "not in the server's replay buffer"
        try:
            sock.connect(self.source.replay_endpoint)
            sock.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                if not sock.poll(int(REPLAY_TIMEOUT_S * 1000)):
                    why = f"replay endpoint silent for {REPLAY_TIMEOUT_S:g} s"
                    break
                parts = sock.recv_multipart()
                if len(parts) != 4:
                    self._malformed(f"replay reply has {len(parts)} parts, expected 4")
                    continue
                try:
                    seq = decode_seq(parts[2])
                    if seq == END_SEQ:
                        break
                    if start <= seq < stop:
                        out.append(decode_payload(seq, parts[3]))
                except KvDecodeError as exc:
                    self._malformed(str(exc))
        finally:
            sock.close(linger=0)
        out.sort(key=lambda b: b.seq)
        return out, why

    def _restarted(self, batch: KvBatch) -> None:
        self.stats.publisher_restarts += 1
        engine_id = self._engine_id(batch)
        # A restarted server starts with an empty cache: record it as a clear.
        self.writer.append(
            "kv_events", (engine_id, batch.ts_unix_s, batch.seq, "cleared", None, None, None, "restart")
        )
        self.writer.event(
            "kv_publisher_restart",
            f"{self.label}: KV-event sequence restarted at {batch.seq} (server restarted?)", engine_id,
        )
        self._expected = batch.seq

    def _malformed(self, message: str) -> None:
        self.stats.malformed += 1
        if self.stats.malformed == 1:
            print(f"kvscope: {self.label}: malformed KV-event frame: {message}", file=sys.stderr)
            self.writer.event("kv_event_error", f"malformed KV-event frame: {message}", None)


class KvEventHub:
    """Every subscriber of an attach on one thread: one ZMQ context, one poller over their
    sockets (a fleet of servers costs one thread, and stopping drains them all at once)."""

    def __init__(self, subscribers: list[KvEventSubscriber]) -> None:
        self.subscribers = subscribers
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvscope-kv-events", daemon=True)

    def start(self, timeout_s: float = 2.0) -> None:
        """Start the thread; returns once every socket is set up (each failure said once)."""
        self._thread.start()
        self._ready.wait(timeout_s)
        for sub in self.subscribers:
            sub.said_setup()

    def stop(self, drain_s: float = 0.3) -> None:
        """Read what is still in flight for ``drain_s``, then stop and record each one's counts."""
        if self._thread.is_alive():
            time.sleep(drain_s)
        self._stop.set()
        self._thread.join(timeout=REPLAY_TIMEOUT_S + 2.0)
        for sub in self.subscribers:
            sub.summarize()
        self._ctx.term()

    def _run(self) -> None:
        poller = zmq.Poller()
        owners: dict[zmq.Socket, KvEventSubscriber] = {}
        for sub in self.subscribers:
            sock = sub.open(self._ctx)
            if sock is not None:
                owners[sock] = sub
                poller.register(sock, zmq.POLLIN)
        self._ready.set()
        try:
            while not self._stop.is_set() and owners:
                for sock, _ in poller.poll(int(POLL_S * 1000)):
                    owner = owners[sock]
                    try:
                        owner.receive(sock.recv_multipart())
                    except Exception as exc:  # one stream's surprise stops that stream only
                        owner.writer.event("error", f"KV-event subscriber of {owner.label} "
                                           f"stopped: {exc!r}", None)
                        poller.unregister(sock)
                        sock.close(linger=0)
                        del owners[sock]
        finally:
            for sock in owners:
                sock.close(linger=0)
