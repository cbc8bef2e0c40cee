"""The KV-event decoder: vLLM 0.32's own encoder round-trips, the positional (0.20-0.2x) shape
decodes the same, and fuzzed or mutated frames never raise anything but KvDecodeError."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

from profiler.attach.kv_decode import (
    KvDecodeError,
    decode_frame,
    decode_payload,
    decode_seq,
    event_rows,
    fold_hash,
)

# vLLM's own event classes and publisher: the engine tier (it needs vLLM, the unit tier does not)
pytestmark = pytest.mark.engine

# 150 examples a run (about 1 s per property): every run of the unit tier draws new ones, and
# hypothesis replays saved failures first.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASK = (1 << 64) - 1

hashes = st.one_of(st.integers(0, MASK), st.binary(min_size=1, max_size=32))
stored = st.builds(
    lambda hs, parent, medium: BlockStored(
        block_hashes=hs, parent_block_hash=parent, token_ids=list(range(4 * len(hs))),
        block_size=4, lora_id=None, medium=medium, lora_name=None),
    st.lists(hashes, min_size=1, max_size=6), st.none() | hashes, st.sampled_from(["GPU", "CPU", None]),
)
removed = st.builds(lambda hs, m: BlockRemoved(block_hashes=hs, medium=m),
                    st.lists(hashes, min_size=1, max_size=6), st.sampled_from(["GPU", None]))
events = st.lists(st.one_of(stored, removed, st.just(AllBlocksCleared())), max_size=8)


def frame(seq: int, payload: bytes) -> list[bytes]:
    return [b"", seq.to_bytes(8, "big"), payload]


def expected(ev: BlockStored | BlockRemoved | AllBlocksCleared) -> tuple[object, ...]:
    if isinstance(ev, AllBlocksCleared):
        return ("cleared", ())
    kind = "stored" if isinstance(ev, BlockStored) else "removed"
    return (kind, tuple(fold_hash(h) for h in ev.block_hashes))


def legacy_array(ev: BlockStored | BlockRemoved | AllBlocksCleared) -> list[object]:
    """The positional wire shape of vLLM 0.20-0.2x (array_like tagged structs)."""
    if isinstance(ev, BlockStored):
        return ["BlockStored", ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size,
                ev.lora_id, ev.medium]
    if isinstance(ev, BlockRemoved):
        return ["BlockRemoved", ev.block_hashes, ev.medium]
    return ["AllBlocksCleared"]


@FUZZ
@given(evs=events, seq=st.integers(0, 2**62), ts=st.floats(0, 4e9), rank=st.none() | st.integers(0, 7))
def test_vllm_encoder_round_trip(evs: list, seq: int, ts: float, rank: int | None) -> None:
    payload = msgspec.msgpack.encode(KVEventBatch(ts=ts, events=evs, data_parallel_rank=rank))
    batch = decode_frame(frame(seq, payload))
    assert (batch.seq, batch.ts_unix_s, batch.dp_rank) == (seq, ts, rank)
    assert [(e.kind, e.block_hashes) for e in batch.events] == [expected(e) for e in evs]
    # the positional shape carries the same events
    legacy = msgspec.msgpack.encode([ts, [legacy_array(e) for e in evs], rank])
    assert decode_payload(seq, legacy).events == batch.events


@FUZZ
@given(evs=events)
def test_rows_chain_parents_and_fold_to_int64(evs: list) -> None:
    batch = decode_payload(3, msgspec.msgpack.encode(KVEventBatch(ts=1.0, events=evs)))
    rows = event_rows(batch, 7, "live")
    assert len(rows) == sum(1 if isinstance(e, AllBlocksCleared) else len(e.block_hashes) for e in evs)
    for row in rows:
        assert row[0] == 7 and row[2] == 3
        for h in (row[4], row[5]):
            assert h is None or -(1 << 63) <= h < (1 << 63)
    i = 0
    for e in evs:
        if isinstance(e, BlockStored):
            parents = [e.parent_block_hash, *e.block_hashes[:-1]]
            for p in parents:
                assert rows[i][5] == (None if p is None else fold_hash(p))
                i += 1
        else:
            i += 1 if isinstance(e, AllBlocksCleared) else len(e.block_hashes)


@given(h=hashes)
def test_fold_hash_matches_vllm_int_hashes(h: int | bytes) -> None:
    # vLLM's int form of a bytes hash is its low 64 bits (maybe_convert_block_hash)
    as_int = (int.from_bytes(h, "big") if isinstance(h, bytes) else h) & MASK
    assert fold_hash(h) & MASK == as_int


@FUZZ
@given(parts=st.lists(st.binary(max_size=64), max_size=5))
def test_random_frames_only_raise_decode_error(parts: list[bytes]) -> None:
    try:
        decode_frame(parts)
    except KvDecodeError as exc:
        assert "\n" not in str(exc)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12) | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "type"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["type", "block_hashes", "parent_block_hash", "medium", "x"]), inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(value=msgpack_values)
def test_random_msgpack_structures_only_raise_decode_error(value: object) -> None:
    payload = msgspec.msgpack.encode(value)
    for shaped in (payload, msgspec.msgpack.encode([1.0, [value], 0]),
                   msgspec.msgpack.encode([1.0, value])):
        try:
            batch = decode_payload(1, shaped)
        except KvDecodeError:
            continue
        assert all(e.kind in ("stored", "removed", "cleared") for e in batch.events)


@FUZZ
@given(evs=events.filter(bool), cut=st.integers(0, 400), flips=st.lists(st.integers(0, 400), max_size=4))
def test_mutated_real_frames_only_raise_decode_error(evs: list, cut: int, flips: list[int]) -> None:
    raw = bytearray(msgspec.msgpack.encode(KVEventBatch(ts=2.0, events=evs)))
    for f in flips:
        if raw:
            raw[f % len(raw)] ^= 0xFF
    try:
        decode_payload(9, bytes(raw[: max(cut, 1)] if cut < len(raw) else raw))
    except KvDecodeError:
        pass


def test_seq_frame_and_unknown_event_types() -> None:
    assert decode_seq((-1).to_bytes(8, "big", signed=True)) == -1
    try:
        decode_seq(b"\x00" * 7)
        raise AssertionError("7-byte seq accepted")
    except KvDecodeError as exc:
        assert "expected 8" in str(exc)
    # a future event type is skipped and counted, not an error
    payload = msgspec.msgpack.encode([1.0, [{"type": "BlockPinned", "block_hashes": [1]},
                                            {"type": "BlockRemoved", "block_hashes": [2]}]])
    batch = decode_payload(0, payload)
    assert batch.unknown_events == 1 and [e.kind for e in batch.events] == ["removed"]


def test_summary_counts_the_gpu_tier_only_and_times_restores() -> None:
    import pandas as pd

    from profiler.analysis.kv_events import summarize_kv_events

    def stored(h: int, medium: str) -> BlockStored:
        return BlockStored(block_hashes=[h], parent_block_hash=None, token_ids=[1] * 4,
                           block_size=4, lora_id=None, medium=medium, lora_name=None)

    batches = [  # (ts, events): block 1 is evicted at t=11 and recomputed at t=13.5
        (10.0, [stored(1, "GPU"), stored(2, "GPU")]),
        (11.0, [BlockRemoved(block_hashes=[1], medium="GPU"), stored(1, "CPU")]),  # offloaded copy
        (13.5, [stored(1, "GPU"), BlockRemoved(block_hashes=[1], medium="CPU")]),
    ]
    rows = []
    for seq, (ts, evs) in enumerate(batches):
        rows += event_rows(decode_payload(seq, msgspec.msgpack.encode(KVEventBatch(ts=ts, events=evs))),
                           1, "live")
    df = pd.DataFrame(rows, columns=["engine_id", "t_unix_s", "seq", "kind", "block_hash",
                                     "parent_block_hash", "medium", "source"])
    s = summarize_kv_events(df, {1: 8}, bin_s=1.0)
    assert (s.stored_blocks, s.evicted_blocks, s.restored_blocks) == (3, 1, 1)
    assert list(s.evicted_s) == [2.5]
    assert list(s.resident["resident_blocks"]) == [2, 1, 2]
    assert list(s.resident["capacity_blocks"]) == [8, 8, 8]
    assert s.rates["evictions_per_s"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert s.restore_frac == 1 / 3 and s.median_evicted_s == 2.5
    assert s.per_engine.to_dict("records") == [
        {"engine_id": 1, "stored_blocks": 3, "evicted_blocks": 1, "restored_blocks": 1, "clears": 0}]
