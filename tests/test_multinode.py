"""A multi-node engine recorded on one host: vLLM's multiprocessing launch with two node ranks
(``--nnodes 2``, TP=2: one worker per node), each node under its own ``kvscope record`` writing a
shard into one session folder; the folder reads as one session equal to the run's independent
stat logger, with each node's worker in its own shard."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.analysis.report import build_report
from profiler.session.reader import open_session
from profiler.session.shards import PID_STRIDE, SHARDS_KEY
from tests.support.engine import engine_lock
from tests.support.multinode import REQUESTS, record_two_nodes

pytestmark = pytest.mark.engine


def test_two_node_ranks_record_one_folder_session(tmp_path: Path) -> None:
    folder = tmp_path / "tp2.kvscope"
    with engine_lock():
        out = record_two_nodes(folder, tmp_path / "tiny-llama")
    assert out["node0_rc"] == 0, out["node0_out"][-3000:]
    assert out["node1_rc"] == 0, out["node1_out"][-3000:]
    counts = out["counts"]
    assert counts is not None and counts["finished"] == REQUESTS
    assert len(list(folder.glob("*.kvscope"))) == 2
    with open_session(folder) as s:
        meta = s.meta()
        report = build_report(s)
        procs = s.table("processes")
        startup = s.table("startup_memory")
    shards = meta[SHARDS_KEY]
    assert [(x["node_rank"], x["nnodes"], x["complete"]) for x in shards] == [(0, 2, True), (1, 2, True)]
    assert report["session"]["complete"] is True
    # the same numbers as the independent stat logger of node 0's engine
    assert report["steps"] == counts["steps"]
    assert report["requests_finished"] == counts["finished"]
    assert report["prefix_cache"]["queries_tokens"] == counts["prefix_queries"]
    assert report["prefix_cache"]["hits_tokens"] == counts["prefix_hits"]
    # each node's worker, in its own shard: rank 0 as recorded, rank 1 with the shifted pid
    workers = procs[procs["role"] == "worker"].sort_values("rank")
    assert list(workers["rank"]) == [0, 1]
    assert int(workers["pid"].iloc[0]) < PID_STRIDE <= int(workers["pid"].iloc[1])
    assert sorted(startup["rank"]) == [0, 1]
    assert report["engine"]["tensor_parallel_size"] == 2
