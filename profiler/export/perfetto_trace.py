"""A Perfetto trace of a session, written with the ``perfetto`` package's trace builder.

Layout (open the file in https://ui.perfetto.dev, or any Perfetto trace processor):

* one process per engine (``engine N (label)``) holding counter tracks ``KV cache usage`` (percent),
  ``running`` and ``waiting`` (requests), one instant per step that preempted (``preemption``,
  with the count and the queue), and its finished requests as slices (``request <id>``: arrival →
  finish, end-to-end; children ``queued``, ``prefill``, ``decode`` from vLLM's own intervals, laid
  back from the finish) on as many ``requests`` lanes as were in flight at once;
* a ``GPUs`` process with one counter track per device (``GPU i used``, bytes; NVML samples);
* a ``session`` process with the events as instants (``OOM``, ``error``, ``engine_start``, ...:
  the message and details as annotations) and the intervals without data as ``gap`` slices with
  their reason.

Timestamps are unix nanoseconds. A counter sample is written only when its value changes (a
Perfetto counter holds its value until the next sample, so nothing is lost); a NULL (not measured)
is never written as a number. Packets are streamed in time order, so a 10M-step session never sits
in memory.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    CounterDescriptor,
    TracePacket,
    TrackEvent,
)
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from profiler.session.reader import Session
from profiler.units import printable

SEQUENCE_ID = 1
"""The one writer sequence of the trace."""

SYNTHETIC_PID_BASE = 1_000_000
"""Perfetto process ids of the trace's groups (engines, GPUs, session): session-unique, and far
from the real pids, which are kept in each track's description."""

_NS = 1e9
_BATCH_ROWS = 50_000


@dataclass(frozen=True)
class TraceStats:
    """What the written trace holds."""

    packets: int
    counter_samples: int
    request_slices: int
    lanes: int
    preemption_instants: int
    event_instants: int
    gap_slices: int


class _Tracks:
    """Track uuids and their descriptor packets."""

    def __init__(self, builder: StreamingTraceProtoBuilder) -> None:
        self._b = builder
        self._next = 1
        self.packets = 0

    def _uuid(self) -> int:
        self._next += 1
        return self._next

    def process(self, pid: int, name: str, description: str = "") -> int:
        uuid = self._uuid()
        p = self._packet()
        p.track_descriptor.uuid = uuid
        p.track_descriptor.process.pid = pid
        p.track_descriptor.process.process_name = name
        if description:
            p.track_descriptor.description = description
        self._write(p)
        return uuid

    def child(self, parent: int, name: str, counter_unit: int | None = None,
              unit_name: str = "") -> int:
        uuid = self._uuid()
        p = self._packet()
        d = p.track_descriptor
        d.uuid = uuid
        d.parent_uuid = parent
        d.name = name
        if counter_unit is not None:
            d.counter.unit = counter_unit  # type: ignore[assignment]
            if unit_name:
                d.counter.unit_name = unit_name
        self._write(p)
        return uuid

    def _packet(self) -> TracePacket:
        p = self._b.create_packet()
        p.trusted_packet_sequence_id = SEQUENCE_ID
        if self.packets == 0:
            p.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
        return p

    def _write(self, p: TracePacket) -> None:
        self._b.write_packet(p)
        self.packets += 1


Emit = Callable[[TracePacket], None]
Item = tuple[int, int, Emit]
"""(timestamp ns, tie-break order, fills the packet's track event)."""


def export_perfetto(session: Session, out: Path) -> TraceStats:
    """Write ``session`` as a Perfetto trace to ``out``; returns what it holds."""
    with out.open("wb") as fh:
        return write_trace(session, fh)


def write_trace(session: Session, fh: BinaryIO) -> TraceStats:
    """Stream the trace of ``session`` into ``fh`` (see the module docstring for its layout)."""
    builder = StreamingTraceProtoBuilder(fh)
    tracks = _Tracks(builder)
    name = printable(session.path.stem)
    counts = {"counter": 0, "request": 0, "preempt": 0, "event": 0, "gap": 0, "lanes": 0}
    streams: list[Iterator[Item]] = []
    engines = session.rows("SELECT engine_id, label, pid, source FROM engines ORDER BY engine_id")
    for i, (eid, label, pid, source) in enumerate(engines):
        title = f"engine {eid}" + (f" ({printable(label)})" if label else "")
        desc = f"kvscope session {name}; frontend pid {pid}; source {source}"
        proc = tracks.process(SYNTHETIC_PID_BASE + i, title, desc)
        kv = tracks.child(proc, "KV cache usage", CounterDescriptor.UNIT_UNSPECIFIED, "%")
        running = tracks.child(proc, "running requests", CounterDescriptor.UNIT_COUNT)
        waiting = tracks.child(proc, "waiting requests", CounterDescriptor.UNIT_COUNT)
        preempt = tracks.child(proc, "preemptions")
        streams.append(_step_counters(session, eid, {kv: 100.0, running: 1.0, waiting: 1.0},
                                      counts))
        streams.append(_preemptions(session, eid, preempt, counts))
        streams.append(_requests(session, eid, proc, tracks, counts))
    gpus = session.rows("SELECT DISTINCT device_index FROM gpu_samples "
                        "WHERE device_index IS NOT NULL ORDER BY device_index")
    if gpus:
        names = dict(session.rows("SELECT device_index, name FROM gpus"))
        proc = tracks.process(SYNTHETIC_PID_BASE + len(engines), "GPUs", "NVML samples")
        for (dev,) in gpus:
            label = f"GPU {dev} used" + (f" ({printable(names[dev])})" if names.get(dev) else "")
            track = tracks.child(proc, label, CounterDescriptor.UNIT_SIZE_BYTES)
            streams.append(_gpu_counter(session, int(dev), track, counts))
    proc = tracks.process(SYNTHETIC_PID_BASE + len(engines) + 1, f"session {name}",
                          "kvscope events and intervals without data")
    ev_track = tracks.child(proc, "events")
    gap_track = tracks.child(proc, "gaps (no data)")
    streams.append(_events(session, ev_track, counts))
    streams.append(_gaps(session, gap_track, counts))
    written = 0
    for ts, _, fill in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        p = tracks._packet()
        p.timestamp = ts
        fill(p)
        builder.write_packet(p)
        written += 1
    return TraceStats(tracks.packets + written, counts["counter"], counts["request"],
                      counts["lanes"], counts["preempt"], counts["event"], counts["gap"])


def _ns(t_unix_s: float) -> int:
    return int(round(t_unix_s * _NS))


def _counter(track: int, value: float) -> Emit:
    def fill(p: TracePacket) -> None:
        e = p.track_event
        e.type = TrackEvent.TYPE_COUNTER
        e.track_uuid = track
        e.double_counter_value = value
    return fill


def _step_counters(session: Session, engine_id: int, scales: dict[int, float],
                   counts: dict[str, int]) -> Iterator[Item]:
    """KV usage, running and waiting of every step, each written when it changes."""
    tracks = list(scales)
    last: dict[int, float | None] = dict.fromkeys(tracks)
    cur = session.db.execute(
        "SELECT t_unix_s, kv_usage_frac, running, waiting FROM steps "
        "WHERE engine_id = ? AND t_unix_s IS NOT NULL ORDER BY t_unix_s, rowid", (engine_id,))
    while rows := cur.fetchmany(_BATCH_ROWS):
        for t, *values in rows:
            ts = _ns(t)
            for k, (track, v) in enumerate(zip(tracks, values, strict=True)):
                if v is None:
                    continue
                v = float(v) * scales[track]
                if last[track] == v:
                    continue
                last[track] = v
                counts["counter"] += 1
                yield ts, k, _counter(track, v)


def _gpu_counter(session: Session, device: int, track: int,
                 counts: dict[str, int]) -> Iterator[Item]:
    last = None
    cur = session.db.execute(
        "SELECT t_unix_s, used_bytes FROM gpu_samples WHERE device_index = ? "
        "AND t_unix_s IS NOT NULL AND used_bytes IS NOT NULL ORDER BY t_unix_s, rowid", (device,))
    while rows := cur.fetchmany(_BATCH_ROWS):
        for t, used in rows:
            if used == last:
                continue
            last = used
            counts["counter"] += 1
            yield _ns(t), 0, _counter(track, float(used))


def _instant(track: int, name: str, annotations: dict[str, Any]) -> Emit:
    def fill(p: TracePacket) -> None:
        e = p.track_event
        e.type = TrackEvent.TYPE_INSTANT
        e.track_uuid = track
        e.name = name
        _annotate(e, annotations)
    return fill


def _annotate(e: TrackEvent, annotations: dict[str, Any]) -> None:
    for key, value in annotations.items():
        if value is None:
            continue
        a = e.debug_annotations.add()
        a.name = key
        if isinstance(value, bool):
            a.bool_value = value
        elif isinstance(value, int):
            a.int_value = value
        elif isinstance(value, float):
            a.double_value = value
        else:
            a.string_value = printable(value) if key != "details" else str(value)


def _preemptions(session: Session, engine_id: int, track: int,
                 counts: dict[str, int]) -> Iterator[Item]:
    cur = session.db.execute(
        "SELECT t_unix_s, preemptions, waiting, kv_usage_frac FROM steps WHERE engine_id = ? "
        "AND preemptions > 0 AND t_unix_s IS NOT NULL ORDER BY t_unix_s, rowid", (engine_id,))
    while rows := cur.fetchmany(_BATCH_ROWS):
        for t, n, waiting, kv in rows:
            counts["preempt"] += 1
            yield _ns(t), 3, _instant(track, "preemption" if n == 1 else f"preemption ×{n}",
                                      {"preemptions": int(n), "waiting": waiting,
                                       "kv_usage_frac": kv})


def _slice(track: int, name: str, begin: bool, annotations: dict[str, Any] | None = None) -> Emit:
    def fill(p: TracePacket) -> None:
        e = p.track_event
        e.type = TrackEvent.TYPE_SLICE_BEGIN if begin else TrackEvent.TYPE_SLICE_END
        e.track_uuid = track
        if begin:
            e.name = name
            if annotations:
                _annotate(e, annotations)
    return fill


def request_phases(t_finished_unix_s: float, e2e_s: float, queued_s: float | None,
                   prefill_s: float | None, decode_s: float | None
                   ) -> list[tuple[str, float, float]]:
    """(phase, start, end) in unix seconds of a finished request's ``queued``/``prefill``/``decode``,
    laid back from its finish (vLLM measures them in the engine core, the end-to-end time in the
    frontend) and kept inside ``[finish - e2e, finish]``. A phase not measured is left out."""
    arrival = t_finished_unix_s - e2e_s
    out = []
    end = t_finished_unix_s
    for phase, dur in (("decode", decode_s), ("prefill", prefill_s), ("queued", queued_s)):
        if dur is None:
            continue
        start = max(end - dur, arrival)
        if end > start:
            out.append((phase, start, end))
        end = start
    return out[::-1]


def _requests(session: Session, engine_id: int, proc: int, tracks: _Tracks,
              counts: dict[str, int]) -> Iterator[Item]:
    """Finished requests as slices; lanes are created as concurrency needs them."""
    rows = session.rows(
        "SELECT request_id, t_finished_unix_s, e2e_s, queued_s, prefill_s, decode_s, ttft_s, "
        "prompt_tokens, generation_tokens, cached_tokens, preemptions, finish_reason FROM requests "
        "WHERE engine_id = ? AND t_finished_unix_s IS NOT NULL AND e2e_s IS NOT NULL "
        "ORDER BY t_finished_unix_s - e2e_s, rowid", (engine_id,))
    free: list[tuple[int, int]] = []  # (end ns, lane index) of lanes in use
    idle: list[int] = []  # lane indexes free now
    lane_tracks: list[int] = []
    items: list[Item] = []
    for (rid, t_fin, e2e, queued, prefill, decode, ttft, prompt, gen, cached, pre,
         reason) in rows:
        start_ns, end_ns = _ns(t_fin - e2e), _ns(t_fin)
        while free and free[0][0] < start_ns:
            heapq.heappush(idle, heapq.heappop(free)[1])
        if idle:
            lane = heapq.heappop(idle)
        else:
            lane = len(lane_tracks)
            lane_tracks.append(tracks.child(proc, f"requests (lane {lane + 1})"))
        heapq.heappush(free, (end_ns, lane))
        track = lane_tracks[lane]
        counts["request"] += 1
        items.append((start_ns, 1, _slice(track, f"request {printable(rid)}", True, {
            "request_id": rid, "e2e_s": e2e, "ttft_s": ttft, "queued_s": queued,
            "prefill_s": prefill, "decode_s": decode, "prompt_tokens": prompt,
            "generation_tokens": gen, "cached_tokens": cached, "preemptions": pre,
            "finish_reason": reason})))
        for phase, a, b in request_phases(t_fin, e2e, queued, prefill, decode):
            a_ns, b_ns = max(_ns(a), start_ns), min(_ns(b), end_ns)
            if b_ns > a_ns:
                items.append((a_ns, 2, _slice(track, phase, True)))
                items.append((b_ns, -2, _slice(track, phase, False)))
        items.append((end_ns, -1, _slice(track, "", False)))
    counts["lanes"] += len(lane_tracks)
    # at one timestamp: phase ends (-2), the request's end (-1), then begins (request 1, phase 2)
    items.sort(key=lambda it: (it[0], it[1]))
    yield from items


def _events(session: Session, track: int, counts: dict[str, int]) -> Iterator[Item]:
    rows = session.rows("SELECT t_unix_s, pid, engine_id, kind, message, details_json FROM events "
                        "WHERE t_unix_s IS NOT NULL ORDER BY t_unix_s, rowid")
    for t, pid, eid, kind, message, details in rows:
        counts["event"] += 1
        name = "OOM" if kind == "oom" else str(kind or "event")
        where = None
        if details:
            try:
                parsed = json.loads(details)
                where = parsed.get("where") if isinstance(parsed, dict) else None
            except (ValueError, RecursionError):
                where = None
        yield _ns(t), 4, _instant(track, printable(name), {
            "kind": kind, "message": message, "pid": pid, "engine_id": eid,
            "where": where if isinstance(where, str) else None,
            "details": details if details and len(details) <= 4096 else None})


def _gaps(session: Session, track: int, counts: dict[str, int]) -> Iterator[Item]:
    rows = session.rows("SELECT t_start_unix_s, t_end_unix_s, source, reason, engine_id FROM gaps "
                        "WHERE t_start_unix_s IS NOT NULL AND t_end_unix_s IS NOT NULL "
                        "ORDER BY t_start_unix_s, rowid")
    items: list[Item] = []
    end_at = 0
    for a, b, source, reason, eid in rows:
        a_ns = max(_ns(a), end_at + 1)  # one track: overlapping gaps would not nest
        b_ns = max(_ns(b), a_ns + 1)
        end_at = b_ns
        counts["gap"] += 1
        items.append((a_ns, 1, _slice(track, f"gap: {source or 'no data'}", True,
                                      {"reason": reason, "source": source, "engine_id": eid})))
        items.append((b_ns, -2, _slice(track, "", False)))
    yield from sorted(items, key=lambda it: (it[0], it[1]))
