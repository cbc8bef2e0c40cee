"""Read a Perfetto trace back with the ``perfetto`` package's own protobuf classes and check it.

Perfetto's trace processor needs a binary that it downloads at first use (no network here), so the
trace is decoded as the protobuf it is and checked the way the trace processor reads it: every
track event names a declared track, counter values sit on counter tracks, and the slices of each
track nest (a begin/end stack per track, in timestamp order).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent


@dataclass
class Slice:
    """One complete slice."""

    track: str
    name: str
    ts_ns: int
    dur_ns: int
    depth: int
    args: dict[str, object]


@dataclass
class ParsedTrace:
    """What a trace holds, by track name."""

    track_names: dict[int, str]
    processes: dict[int, str]
    """Track uuid -> process name of the process tracks."""
    parents: dict[int, int]
    counters: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    slices: list[Slice] = field(default_factory=list)
    instants: list[tuple[str, str, int, dict[str, object]]] = field(default_factory=list)
    """(track name, event name, ts ns, annotations)."""

    def process_of(self, track_name: str) -> str:
        """Name of the process a (child) track belongs to."""
        uuid = next(u for u, n in self.track_names.items() if n == track_name)
        return self.processes[self.parents[uuid]]


def _args(e: TrackEvent) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in e.debug_annotations:
        kind = a.WhichOneof("value")
        out[a.name] = getattr(a, kind) if kind else None
    return out


def parse_trace(path: Path) -> ParsedTrace:
    """Decode and check ``path``; AssertionError names the first thing that is wrong."""
    trace = Trace()
    trace.ParseFromString(path.read_bytes())
    names: dict[int, str] = {}
    processes: dict[int, str] = {}
    parents: dict[int, int] = {}
    counter_tracks: set[int] = set()
    events: list[tuple[int, int, TrackEvent]] = []
    pids: set[int] = set()
    for i, p in enumerate(trace.packet):
        assert p.trusted_packet_sequence_id, f"packet {i} has no sequence id"
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            assert d.uuid and d.uuid not in names, f"track uuid {d.uuid} missing or declared twice"
            if d.HasField("process"):
                assert d.process.pid not in pids, f"pid {d.process.pid} declared twice"
                pids.add(d.process.pid)
                names[d.uuid] = processes[d.uuid] = d.process.process_name
            else:
                assert d.parent_uuid in names, f"track {d.name} has an undeclared parent"
                names[d.uuid] = d.name
                parents[d.uuid] = d.parent_uuid
            if d.HasField("counter"):
                counter_tracks.add(d.uuid)
        if p.HasField("track_event"):
            assert p.timestamp > 0, f"packet {i}: track event without a timestamp"
            events.append((p.timestamp, i, p.track_event))
    out = ParsedTrace(names, processes, parents)
    stacks: dict[int, list[tuple[str, int, dict[str, object]]]] = defaultdict(list)
    events.sort(key=lambda x: (x[0], x[1]))  # the trace processor's sort: stable by time
    for ts, i, e in events:
        assert e.track_uuid in names, f"packet {i}: event on undeclared track {e.track_uuid}"
        track = names[e.track_uuid]
        if e.type == TrackEvent.TYPE_COUNTER:
            assert e.track_uuid in counter_tracks, f"counter value on non-counter track {track}"
            assert math.isfinite(e.double_counter_value), f"{track}: non-finite counter"
            out.counters[track].append((ts, e.double_counter_value))
        elif e.type == TrackEvent.TYPE_SLICE_BEGIN:
            assert e.track_uuid not in counter_tracks, f"slice on counter track {track}"
            stacks[e.track_uuid].append((e.name, ts, _args(e)))
        elif e.type == TrackEvent.TYPE_SLICE_END:
            assert stacks[e.track_uuid], f"packet {i}: slice end without a begin on {track}"
            name, start, args = stacks[e.track_uuid].pop()
            out.slices.append(Slice(track, name, start, ts - start, len(stacks[e.track_uuid]), args))
        elif e.type == TrackEvent.TYPE_INSTANT:
            out.instants.append((track, e.name, ts, _args(e)))
        else:
            raise AssertionError(f"packet {i}: unexpected event type {e.type}")
    open_ = {names[u]: len(s) for u, s in stacks.items() if s}
    assert not open_, f"slices never ended: {open_}"
    return out
