"""The KV-event subscriber against vLLM's real ZmqEventPublisher: history replay on attach,
gap filling through the replay socket, lost batches recorded as gaps, duplicates and restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVEventBatch, ZmqEventPublisher

from profiler.analysis.kv_events import kv_event_summary
from profiler.attach.kv_decode import KvBatch, decode_payload
from profiler.attach.kv_events import KvEventHub, KvEventSubscriber, KvSource
from profiler.session.reader import open_session
from profiler.session.writer import SessionWriter
from tests.support.ports import free_port
from tests.support.waiting import wait_until

# vLLM's own event classes and publisher: the engine tier (it needs vLLM, the unit tier does not)
pytestmark = pytest.mark.engine


def batch(i: int) -> KVEventBatch:
    """Batch i stores block 100+i; every third batch evicts the block stored two batches before."""
    events: list[BlockStored | BlockRemoved] = [BlockStored(
        block_hashes=[100 + i], parent_block_hash=None, token_ids=[1] * 16, block_size=16,
        lora_id=None, medium="GPU", lora_name=None)]
    if i % 3 == 2:
        events.append(BlockRemoved(block_hashes=[100 + i - 2], medium="GPU"))
    return KVEventBatch(ts=1000.0 + i, events=events)


class Publisher:
    """vLLM's publisher on free ports, plus the exact payloads it sent."""

    def __init__(self, buffer_steps: int) -> None:
        self.port, self.replay_port = free_port(), free_port()
        self.pub = ZmqEventPublisher(
            data_parallel_rank=0, endpoint=f"tcp://*:{self.port}",
            replay_endpoint=f"tcp://*:{self.replay_port}", buffer_steps=buffer_steps,
        )
        self.sent: list[bytes] = []

    def publish(self, n: int) -> None:
        for _ in range(n):
            b = batch(len(self.sent))
            self.sent.append(msgspec.msgpack.encode(b))
            self.pub.publish(b)
        # the publisher sends from its own thread, and buffers each batch (for replay) once sent
        last = len(self.sent) - 1
        wait_until(lambda: self.pub._buffer and self.pub._buffer[-1][0] == last, 10,
                   f"the publisher to send batch {last}")

    def decoded(self, seq: int) -> KvBatch:
        return decode_payload(seq, self.sent[seq])

    def source(self) -> KvSource:
        return KvSource(f"tcp://127.0.0.1:{self.port}", f"tcp://127.0.0.1:{self.replay_port}")


@pytest.fixture
def publisher(request: pytest.FixtureRequest) -> Iterator[Publisher]:
    p = Publisher(getattr(request, "param", 100))
    yield p
    p.pub.shutdown()


def rows(path: Path) -> list[tuple[int, str, str]]:
    kv = open_session(path).table("kv_events", "ORDER BY rowid")
    return list(zip(kv["seq"], kv["kind"], kv["source"], strict=True))


def test_attach_mid_stream_replays_history_then_goes_live(publisher: Publisher, tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path)
    publisher.publish(5)
    sub = KvEventSubscriber(w, publisher.source(), lambda rank: 1, "test")
    hub = KvEventHub([sub])
    hub.start()
    # A SUB socket hears nothing until its subscription reaches the publisher (ZeroMQ's "slow
    # joiner"), and nothing tells when that happened: publish one batch at a time until the
    # subscriber has heard one live. Every batch before that one is history from the replay.
    while True:
        publisher.publish(1)
        try:
            wait_until(lambda: sub.stats.batches > 0, 0.5, "the subscriber to hear a batch")
            break
        except AssertionError:
            assert len(publisher.sent) < 50, "the subscriber never heard the publisher"
    publisher.publish(3)
    n = len(publisher.sent)
    wait_until(lambda: sub.stats.batches == n, 10, f"the subscriber to write {n} batches")
    hub.stop()
    w.close()
    first_live = sub.stats.history_batches  # the batch that triggered the replay of all before it
    assert 5 <= first_live <= n - 4  # everything published before attaching is history
    got = rows(path)
    assert [s for s, k, _ in got if k == "stored"] == list(range(n))
    assert {s: src for s, _, src in got} == {**dict.fromkeys(range(first_live), "history"),
                                            **dict.fromkeys(range(first_live, n), "live")}
    assert sub.stats.lost_batches == 0
    assert len(open_session(path).table("gaps")) == 0


def test_gap_is_filled_from_the_replay_socket(publisher: Publisher, tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path)
    publisher.publish(10)
    sub = KvEventSubscriber(w, publisher.source(), lambda rank: 1, "test", history=False)
    sub._on_batch(publisher.decoded(0), "live")
    sub._on_batch(publisher.decoded(6), "live")  # 1..5 never arrived
    sub._on_batch(publisher.decoded(4), "live")  # late duplicate
    sub._on_batch(publisher.decoded(7), "live")
    w.close()
    got = rows(path)
    assert [s for s, k, _ in got if k == "stored"] == list(range(8))
    assert {s for s, _, src in got if src == "replay"} == set(range(1, 6))
    assert sub.stats.duplicates == 1 and sub.stats.lost_batches == 0
    summary = kv_event_summary(open_session(path))
    assert summary.evicted_blocks == 2 and summary.stored_blocks == 8


@pytest.mark.parametrize("publisher", [3], indirect=True)
def test_batches_gone_from_the_buffer_become_a_gap(publisher: Publisher, tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path)
    publisher.publish(10)  # the publisher keeps only batches 7, 8, 9
    sub = KvEventSubscriber(w, publisher.source(), lambda rank: 1, "test", history=False)
    sub._on_batch(publisher.decoded(0), "live")
    sub._on_batch(publisher.decoded(9), "live")
    w.close()
    s = open_session(path)
    assert [seq for seq, k, _ in rows(path) if k == "stored"] == [0, 7, 8, 9]
    gaps = s.table("gaps")
    assert len(gaps) == 1
    g = gaps.iloc[0]
    assert (g["source"], g["engine_id"]) == ("kv_events", 1)
    assert "1..6 lost" in g["reason"]
    assert (g["t_start_unix_s"], g["t_end_unix_s"]) == (1000.0, 1007.0)
    assert sub.stats.lost_batches == 6
    assert kv_event_summary(s).gaps == 1


def test_publisher_restart_clears_the_cache(publisher: Publisher, tmp_path: Path) -> None:
    path = tmp_path / "s.kvscope"
    w = SessionWriter(path)
    publisher.publish(3)
    sub = KvEventSubscriber(w, publisher.source(), lambda rank: 1, "test", history=False)
    for i in range(3):
        sub._on_batch(publisher.decoded(i), "live")
    # a restarted server numbers its batches from 0 again, with later timestamps
    again = msgspec.msgpack.encode(KVEventBatch(ts=2000.0, events=[BlockStored(
        block_hashes=[100], parent_block_hash=None, token_ids=[1] * 16, block_size=16,
        lora_id=None, medium="GPU", lora_name=None)]))
    sub._on_batch(decode_payload(0, again), "live")
    w.close()
    s = open_session(path)
    assert ("cleared", "restart") in {(k, src) for _, k, src in rows(path)}
    assert "kv_publisher_restart" in set(s.table("events")["kind"])
    summary = kv_event_summary(s)
    # block 100 was evicted at batch 2 but the restart cleared the cache: not a re-store
    assert summary.restored_blocks == 0 and summary.clears == 1
    assert summary.resident["resident_blocks"].iloc[-1] == 1


def test_one_hub_thread_serves_every_publisher(tmp_path: Path) -> None:
    """A fleet's publishers share one subscriber thread (KvEventHub): each stream is kept apart
    (its own rows, sequence and counts) and one stop drains them all."""
    import threading

    pubs = [Publisher(100) for _ in range(3)]
    try:
        path = tmp_path / "s.kvscope"
        w = SessionWriter(path)
        subs = [KvEventSubscriber(w, p.source(), lambda rank, i=i: i + 1, f"server {i}",
                                  history=False) for i, p in enumerate(pubs)]
        hub = KvEventHub(subs)
        hub.start()
        assert [t.name for t in threading.enumerate()].count("kvscope-kv-events") == 1
        for p, sub in zip(pubs, subs, strict=True):  # past ZeroMQ's slow joiner, one at a time
            while sub.stats.batches == 0:
                p.publish(1)
                try:
                    wait_until(lambda sub=sub: sub.stats.batches > 0, 0.5, "a first batch")
                except AssertionError:
                    assert len(p.sent) < 50, "the subscriber never heard the publisher"
        for i, p in enumerate(pubs):
            p.publish(i + 2)
        for p, sub in zip(pubs, subs, strict=True):  # the next batch it expects: the next sent
            wait_until(lambda p=p, sub=sub: sub._expected == len(p.sent), 10, "every batch")
        hub.stop()
        w.close()
        s = open_session(path)
        kv = s.table("kv_events")
        for i, (p, sub) in enumerate(zip(pubs, subs, strict=True)):
            mine = kv[kv["engine_id"] == i + 1]
            first_heard = len(p.sent) - sub.stats.batches  # earlier ones: before it joined
            assert sorted(set(mine["seq"])) == list(range(first_heard, len(p.sent)))
            assert sub.stats.batches >= i + 3
            assert sub.stats.lost_batches == 0
        summaries = s.table("events").query("kind == 'kv_events_summary'")
        assert len(summaries) == 3
    finally:
        for p in pubs:
            p.pub.shutdown()
