"""Data parallelism over two node ranks, recorded on one host: node 0 the API server with DP rank
0's engine core, node 1 ``vllm serve --headless --data-parallel-start-rank 1`` with rank 1's,
each under its own ``kvscope record`` writing a shard into one folder session. The headless
node's engine core has no frontend there: it describes its own engine (``headless``), and reading
the folder joins that onto the frontend's engine of the same DP rank, so every row of rank 1 (KV
cache groups, occupancy, preemptions from node 1; steps and requests from node 0) is one engine,
equal to the server's own per-engine counters of the same run. (A folder missing one of the two
shards: tests/test_shards.py, on the bundled session of this run.)

Run under the engine lock: ``flock /tmp/kvscope-engine.lock python -m pytest tests/test_multinode_dp.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.analysis.report import build_report
from profiler.session.reader import open_session
from profiler.session.shards import shard_files
from tests.support import dp as dpcheck
from tests.support.engine import engine_lock
from tests.support.multinode_dp import BLOCKS, record_dp_two_nodes

pytestmark = pytest.mark.engine

ENGINE_TABLES = ("steps", "requests", "kv_cache_groups", "kv_occupancy", "preemptions", "prompt_blocks")


def test_dp_rank_on_a_headless_node_is_the_frontends_engine(tmp_path: Path) -> None:
    folder = tmp_path / "dp2.kvscope"
    with engine_lock():
        out = record_dp_two_nodes(folder, tmp_path / "tiny-llama")
    assert out["codes"] == [200] * 32, Path(out["node1_log"]).read_text()[-3000:]
    server = out["server"]
    assert sorted(server) == [0, 1] and all(server[e]["finished"] > 0 for e in (0, 1))
    # the headless node's shard: its engine core's own engine row, no frontend
    shards = shard_files(folder)
    assert len(shards) == 2
    sources = []
    for f in shards:
        with open_session(f) as s:
            sources.append(sorted(s.table("engines")["source"]))
    assert sorted(sources) == [["headless"], ["inproc", "inproc"]], sources
    # read as one: two engines (the frontend's), every row of both nodes on one of them
    recorded = dpcheck.per_engine_sums(folder)
    assert recorded == server
    with open_session(folder) as s:
        engines = s.table("engines")
        cores = s.table("processes").query("role == 'engine_core'")
        by_table = {t: s.rows(f"SELECT e.engine_index, COUNT(*) FROM {t} x JOIN engines e "
                              "ON x.engine_id = e.engine_id GROUP BY e.engine_index") for t in ENGINE_TABLES}
        orphans = {t: s.scalar(f"SELECT COUNT(*) FROM {t} WHERE engine_id IS NULL OR engine_id NOT IN "
                               "(SELECT engine_id FROM engines)") for t in ENGINE_TABLES}
        report = build_report(s)
    assert sorted(engines["source"]) == ["inproc", "inproc"]
    assert sorted(engines["engine_index"]) == [0, 1]
    assert list(engines["num_gpu_blocks"]) == [BLOCKS, BLOCKS]  # rank 1's from its own core
    assert sorted(int(r) for r in cores["rank"]) == [0, 1]
    assert orphans == dict.fromkeys(ENGINE_TABLES, 0)
    for table in ("steps", "requests", "kv_cache_groups", "kv_occupancy", "prompt_blocks"):
        assert sorted(i for i, n in by_table[table] if n) == [0, 1], (table, by_table[table])
    # preemptions: the engine cores' rows, per rank, equal to that rank's counter
    with open_session(folder) as s:
        per_rank = dict(s.rows("SELECT e.engine_index, COUNT(*) FROM preemptions x JOIN engines e "
                               "ON x.engine_id = e.engine_id WHERE x.event = 'preempted' "
                               "GROUP BY e.engine_index"))
    assert {i: per_rank.get(i, 0) for i in (0, 1)} == {i: int(server[i]["preemptions"]) for i in (0, 1)}
    assert report["session"]["complete"] is True
    assert report["requests_finished"] == 32
