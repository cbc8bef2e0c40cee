"""Decode vLLM KV-cache event frames (both wire shapes) with msgspec into plain records.

A frame is the ZMQ multipart message ``(topic, seq as 8 bytes big-endian, msgpack payload)``. The
payload is an ``EventBatch`` encoded as an array ``[ts, events, data_parallel_rank]``. Each event
is a tagged struct: a positional array ``["BlockStored", block_hashes, parent, token_ids,
block_size, lora_id, medium, ...]`` in vLLM 0.20-0.2x, or a map ``{"type": "BlockStored",
"block_hashes": ..., ...}`` in later versions. Anything malformed raises KvDecodeError with a
one-line reason; nothing else ever escapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec

from profiler.session.kv_hash import fold_hash as _fold
from profiler.units import first_line

END_SEQ = -1
"""Sequence number of the replay endpoint's end-of-replay marker."""


class KvDecodeError(Exception):
    """A frame is not a KV-event batch; the message is one line."""


@dataclass(frozen=True)
class KvEvent:
    """One KV-cache event with block hashes folded to signed 64-bit ints."""

    kind: str
    """``stored``, ``removed`` or ``cleared``."""
    block_hashes: tuple[int, ...] = ()
    parent_block_hash: int | None = None
    medium: str | None = None
    """Cache tier (``GPU``, ``CPU``, ...); None when the version does not say."""


@dataclass(frozen=True)
class KvBatch:
    """One published batch."""

    seq: int
    ts_unix_s: float
    """Publisher's wall clock when the batch was built."""
    dp_rank: int | None
    events: tuple[KvEvent, ...]
    unknown_events: int = 0
    """Events of a type this kvscope does not know (skipped)."""


_Hash = int | bytes


class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _StoredMap(msgspec.Struct, tag="BlockStored"):
    block_hashes: list[_Hash]
    parent_block_hash: _Hash | None = None
    medium: str | None = None


class _RemovedMap(msgspec.Struct, tag="BlockRemoved"):
    block_hashes: list[_Hash]
    medium: str | None = None


class _ClearedMap(msgspec.Struct, tag="AllBlocksCleared"):
    pass


class _StoredArray(msgspec.Struct, array_like=True, tag="BlockStored"):
    block_hashes: list[_Hash]
    parent_block_hash: _Hash | None = None
    token_ids: list[Any] = []
    block_size: Any = None
    lora_id: Any = None
    medium: str | None = None


class _RemovedArray(msgspec.Struct, array_like=True, tag="BlockRemoved"):
    block_hashes: list[_Hash]
    medium: str | None = None


class _ClearedArray(msgspec.Struct, array_like=True, tag="AllBlocksCleared"):
    pass


_MapEvent = _StoredMap | _RemovedMap | _ClearedMap
_ArrayEvent = _StoredArray | _RemovedArray | _ClearedArray
_KNOWN_TAGS = ("BlockStored", "BlockRemoved", "AllBlocksCleared")
_batch_decoder = msgspec.msgpack.Decoder(_Batch)


def fold_hash(value: int | bytes) -> int:
    """A block hash as a signed 64-bit int (the session's rule, ``session.kv_hash``)."""
    try:
        return _fold(value)
    except ValueError as exc:
        raise KvDecodeError(str(exc)) from None


def decode_seq(raw: bytes) -> int:
    """The sequence number frame (8 bytes big-endian; the end marker is -1)."""
    if len(raw) != 8:
        raise KvDecodeError(f"sequence frame has {len(raw)} bytes, expected 8")
    return int.from_bytes(raw, "big", signed=True)


def decode_payload(seq: int, payload: bytes) -> KvBatch:
    """Decode one msgpack EventBatch payload of either wire shape."""
    try:
        batch = _batch_decoder.decode(payload)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: bad UTF-8 in a string
        raise KvDecodeError(f"batch {seq}: not an EventBatch ({first_line(exc)})") from exc
    if not math.isfinite(batch.ts):
        raise KvDecodeError(f"batch {seq}: timestamp is not a finite number")
    events: list[KvEvent] = []
    unknown = 0
    for raw in batch.events:
        event = _event(seq, raw)
        if event is None:
            unknown += 1
        else:
            events.append(event)
    return KvBatch(seq, batch.ts, batch.data_parallel_rank, tuple(events), unknown)


def decode_frame(parts: list[bytes]) -> KvBatch:
    """Decode a ``(topic, seq, payload)`` multipart message."""
    if len(parts) != 3:
        raise KvDecodeError(f"frame has {len(parts)} parts, expected 3 (topic, seq, payload)")
    return decode_payload(decode_seq(parts[1]), parts[2])


def _event(seq: int, raw: Any) -> KvEvent | None:
    if isinstance(raw, dict):
        tag, target = raw.get("type"), _MapEvent
    elif isinstance(raw, list) and raw:
        tag, target = raw[0], _ArrayEvent
    else:
        raise KvDecodeError(f"batch {seq}: event is a {type(raw).__name__}, not a tagged struct")
    if tag not in _KNOWN_TAGS:
        if isinstance(tag, str):
            return None  # a newer event type: skipped and counted
        raise KvDecodeError(f"batch {seq}: event has no type tag")
    try:
        ev = msgspec.convert(raw, target)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise KvDecodeError(f"batch {seq}: bad {tag} event ({first_line(exc)})") from exc
    if isinstance(ev, _ClearedMap | _ClearedArray):
        return KvEvent("cleared")
    hashes = tuple(fold_hash(h) for h in ev.block_hashes)
    if isinstance(ev, _RemovedMap | _RemovedArray):
        return KvEvent("removed", hashes, None, ev.medium)
    parent = None if ev.parent_block_hash is None else fold_hash(ev.parent_block_hash)
    return KvEvent("stored", hashes, parent, ev.medium)


def event_rows(
    batch: KvBatch, engine_id: int | None, source: str
) -> list[tuple[int | None, float, int, str, int | None, int | None, str | None, str]]:
    """``kv_events`` rows of a batch: one per block (a stored block's parent is the block before)."""
    rows = []
    for ev in batch.events:
        if ev.kind == "cleared":
            rows.append((engine_id, batch.ts_unix_s, batch.seq, "cleared", None, None, None, source))
            continue
        parent = ev.parent_block_hash
        for h in ev.block_hashes:
            rows.append((engine_id, batch.ts_unix_s, batch.seq, ev.kind, h,
                         parent if ev.kind == "stored" else None, ev.medium, source))
            parent = h
    return rows

