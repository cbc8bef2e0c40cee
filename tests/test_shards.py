"""Folder sessions (a multi-node engine's shards) read as one session: ids never collide, time
bounds are the union, completeness needs every expected shard, a missing or cut-off shard is a gap
with its reason; a shard handed back through Ray folds into the driver's session the same way.

Built from real recorded sessions (the bundled CPU sessions, each a real engine's shard)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from profiler.analysis.report import build_report
from profiler.recorder.ray_shards import fold_in
from profiler.session.reader import open_session
from profiler.session.shards import GAP_SOURCE, PID_STRIDE, SHARDS_KEY

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ROOT / "sessions"
A, B = SESSIONS / "healthy.kvscope", SESSIONS / "kv_saturation.kvscope"
DP_NODES = SESSIONS / "multinode_dp2.kvscope"
"""DP=2 over two node ranks (tests/support/multinode_dp.py): the head's shard (frontend, rank 0's
engine core) and a headless node's (rank 1's engine core, its own ``headless`` engine row)."""


def _set_meta(path: Path, **values: object) -> None:
    conn = sqlite3.connect(path)
    try:
        for k, v in values.items():
            if v is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (k,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
        conn.commit()
    finally:
        conn.close()


def _folder(tmp_path: Path, *shards: tuple[Path, dict[str, object]]) -> Path:
    folder = tmp_path / "run.kvscope"
    folder.mkdir()
    for i, (src, meta) in enumerate(shards):
        dest = folder / f"host{i}-{100 + i}.kvscope"
        shutil.copyfile(src, dest)
        _set_meta(dest, **meta)
    return folder


def _counts(path: Path) -> dict[str, object]:
    with open_session(path) as s:
        return {"steps": s.scalar("SELECT COUNT(*) FROM steps"),
                "requests": s.scalar("SELECT COUNT(*) FROM requests"),
                "engines": sorted(r[0] for r in s.rows("SELECT engine_id FROM engines")),
                "pids": sorted(r[0] for r in s.rows("SELECT pid FROM processes")),
                "bounds": s.bounds(), "meta": s.meta()}


def test_two_shards_read_as_one_session(tmp_path: Path) -> None:
    folder = _folder(tmp_path, (A, {"node_rank": 0, "nnodes": 2}), (B, {"node_rank": 1, "nnodes": 2}))
    a, b, both = _counts(A), _counts(B), _counts(folder)
    assert both["steps"] == a["steps"] + b["steps"] > 0
    assert both["requests"] == a["requests"] + b["requests"] > 0
    # engine ids: node 0's as recorded, node 1's after them; no collision
    assert a["engines"] == b["engines"] == [1]
    assert both["engines"] == [1, 2]
    # pids: node 1's shifted by whole strides, the real pid is the remainder
    assert both["pids"] == sorted(a["pids"] + [PID_STRIDE + p for p in b["pids"]])
    # time bounds are the union of the shards'
    assert both["bounds"] == (min(a["bounds"][0], b["bounds"][0]), max(a["bounds"][1], b["bounds"][1]))
    meta = both["meta"]
    assert meta["ended_unix_s"] is not None and "incomplete_reason" not in meta
    assert [s["node_rank"] for s in meta[SHARDS_KEY]] == [0, 1]
    assert [s["engine_id_offset"] for s in meta[SHARDS_KEY]] == [0, 1]
    with open_session(folder) as s:
        report = build_report(s)
    assert report["session"]["complete"] is True
    assert report["steps"] == a["steps"] + b["steps"]
    assert report["session"]["path"] == str(folder)


def test_missing_node_rank_is_a_gap_and_incomplete(tmp_path: Path) -> None:
    folder = _folder(tmp_path, (A, {"node_rank": 0, "nnodes": 3}), (B, {"node_rank": 1, "nnodes": 3}))
    with open_session(folder) as s:
        gaps = s.table("gaps")
        meta = s.meta()
        report = build_report(s)
        start, end = s.bounds()
    mine = gaps[gaps["source"] == GAP_SOURCE]
    assert len(mine) == 1
    assert "no shard from node rank 2 of 3" in mine["reason"].iloc[0]
    # the whole recording: from the session's start to the last shard's end (its data or its finish)
    assert mine["t_start_unix_s"].iloc[0] == start and mine["t_end_unix_s"].iloc[0] >= end
    assert "ended_unix_s" not in meta and "node rank 2 of 3" in meta["incomplete_reason"]
    assert report["session"]["complete"] is False


def test_cut_off_and_unreadable_shards_leave_reasons(tmp_path: Path) -> None:
    folder = _folder(tmp_path, (A, {}), (B, {"ended_unix_s": None}))
    (folder / "host2-102.kvscope").write_bytes(b"not a session at all, just bytes" * 4)
    with open_session(folder) as s:
        meta = s.meta()
        reasons = list(s.table("gaps").query(f"source == '{GAP_SOURCE}'")["reason"])
        steps = s.scalar("SELECT COUNT(*) FROM steps")
    assert steps == _counts(A)["steps"] + _counts(B)["steps"]  # the readable shards still count
    assert len(reasons) == 2
    assert any("host1-101.kvscope" in r and "cut off" in r for r in reasons)
    assert any("host2-102.kvscope" in r and "unreadable" in r for r in reasons)
    assert "ended_unix_s" not in meta


def test_changed_shard_is_read_again(tmp_path: Path) -> None:
    folder = _folder(tmp_path, (A, {}))
    first = _counts(folder)["steps"]
    shutil.copyfile(B, folder / "later-1.kvscope")
    assert _counts(folder)["steps"] == first + _counts(B)["steps"]


def test_empty_folder_is_one_line_error(tmp_path: Path) -> None:
    from profiler.errors import SessionFormatError

    (tmp_path / "empty.kvscope").mkdir()
    with pytest.raises(SessionFormatError, match="no session shards"):
        open_session(tmp_path / "empty.kvscope")


def test_ray_shard_folds_into_driver_session(tmp_path: Path) -> None:
    """What the Ray driver does with a worker's returned bytes at shutdown."""
    driver = tmp_path / "driver.kvscope"
    shutil.copyfile(A, driver)
    before, shard = _counts(driver), _counts(B)
    fold_in(str(driver), "worker-7.kvscope", B.read_bytes())
    after = _counts(driver)
    assert after["steps"] == before["steps"] + shard["steps"]
    assert after["engines"] == [1, 2]
    assert after["pids"] == sorted(before["pids"] + [PID_STRIDE + p for p in shard["pids"]])


def test_ray_gather_that_fails_leaves_a_gap_and_incomplete(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot answer at shutdown (here: the call itself fails, as ray.get does when
    an actor died): the driver's session says so instead of reading as complete."""
    from profiler.recorder import ray_shards
    from profiler.session.writer import SessionWriter

    session = tmp_path / "driver.kvscope"
    w = SessionWriter(session)  # a session of this kvscope (the bundled ones predate `gaps`)
    w.set_meta(started_unix_s=1.8e9 - 5, ended_unix_s=1.8e9)
    monkeypatch.setattr(ray_shards, "_writer", lambda: w)

    class DeadWorkers:
        def collective_rpc(self, method: object, timeout: float | None = None) -> list[object]:
            raise RuntimeError("The actor died unexpectedly before finishing this task.")

    assert ray_shards.gather(DeadWorkers()) == 0
    w.close()
    with open_session(session) as s:
        gaps = s.table("gaps").query(f"source == '{GAP_SOURCE}'")
        meta = s.meta()
        report = build_report(s)
    assert len(gaps) == 1 and "actor died unexpectedly" in gaps["reason"].iloc[0]
    assert "did not hand back their shards" in meta["incomplete_reason"]
    assert report["session"]["complete"] is False


def _dp_shard(headless: bool) -> Path:
    for f in sorted(DP_NODES.glob("*.kvscope")):
        with open_session(f) as s:
            if ("headless" in set(s.table("engines")["source"])) == headless:
                return f
    raise AssertionError(f"no {'headless' if headless else 'head'} shard in {DP_NODES}")


def _engine_rows(s) -> dict[str, list[tuple[object, int]]]:  # noqa: ANN001
    """Rows per engine index of every table an engine core or frontend writes (None: no engine)."""
    out = {}
    for t in ("steps", "requests", "kv_cache_groups", "kv_occupancy", "preemptions"):
        out[t] = s.rows(f"SELECT e.engine_index, COUNT(*) FROM {t} x LEFT JOIN engines e "
                        "ON x.engine_id = e.engine_id GROUP BY e.engine_index ORDER BY 1")
    return out


def test_headless_dp_node_joins_the_frontends_engines() -> None:
    """The folder reads as the frontend's two engines; rank 1's engine-core rows, written on the
    headless node under its own engine row, land on the frontend's engine of DP rank 1."""
    with open_session(_dp_shard(headless=True)) as s:
        own = s.table("engines")
        node1 = _engine_rows(s)
    assert list(own["engine_index"]) == [1] and list(own["source"]) == ["headless"]
    with open_session(DP_NODES) as s:
        engines = s.table("engines").sort_values("engine_index")
        both = _engine_rows(s)
        meta = s.meta()
    assert list(engines["source"]) == ["inproc", "inproc"] and list(engines["engine_index"]) == [0, 1]
    assert list(engines["num_gpu_blocks"]) == [24, 24]  # rank 1's: only its engine core knew it
    assert "incomplete_reason" not in meta
    for table in ("kv_cache_groups", "kv_occupancy", "preemptions"):
        rank1 = dict(both[table]).get(1)
        assert rank1 is not None and rank1 == dict(node1[table])[1], (table, both[table])
        assert None not in dict(both[table]), table  # no row left without an engine
    assert [i for i, _ in both["steps"]] == [0, 1] == [i for i, _ in both["requests"]]


def test_dp_rank_whose_node_was_not_recorded_is_a_gap(tmp_path: Path) -> None:
    head = _folder(tmp_path, (_dp_shard(headless=False), {}))
    with open_session(head) as s:
        meta = s.meta()
        gaps = s.table("gaps")
        report = build_report(s)
    reason = meta["incomplete_reason"]
    assert "no engine core of DP rank 1" in reason and "DP rank 0" not in reason
    assert list(gaps["source"]) == [GAP_SOURCE] and report["session"]["complete"] is False
    # the headless node alone: its engine keeps its own row, every row still on an engine
    alone = tmp_path / "node1"
    alone.mkdir()
    shutil.copyfile(_dp_shard(headless=True), alone / "n1.kvscope")
    with open_session(alone) as s:
        rows = _engine_rows(s)
        sources = list(s.table("engines")["source"])
        reason = s.meta()["incomplete_reason"]
    assert sources == ["headless"] and "no frontend of DP rank 1" in reason
    assert all(None not in dict(v) for v in rows.values()), rows


GPU_DP_NODES = SESSIONS / "gpu_h200x2_multinode_dp.kvscope"
"""The same DP=2 over two node ranks on the lent 2-GPU machine (vLLM 0.26.0), one GPU per node rank:
both recorders on one host, each sampling both GPUs through NVML."""


def test_two_node_ranks_on_one_machine_share_its_gpus_and_pids() -> None:
    """Shards of one machine (GPUs of the same UUID, the same host): two GPUs, not four, each
    sampled once; pids as recorded (one pid space), so each GPU's process is a process of the
    session; the engines joined as on the CPU."""
    shards = sorted(GPU_DP_NODES.glob("*.kvscope"))
    per_shard = []
    for f in shards:
        with open_session(f) as s:
            per_shard.append((sorted(s.table("gpus")["uuid"]), s.scalar("SELECT COUNT(*) FROM gpu_samples")))
    assert len(per_shard) == 2 and per_shard[0][0] == per_shard[1][0] and len(per_shard[0][0]) == 2
    with open_session(GPU_DP_NODES) as s:
        gpus = s.table("gpus")
        samples = s.scalar("SELECT COUNT(*) FROM gpu_samples")
        pids = set(s.table("processes")["pid"])
        users = s.rows("SELECT DISTINCT device_index, pid FROM gpu_process_samples ORDER BY 1")
        engines = s.table("engines")
        meta = s.meta()
    assert sorted(gpus["uuid"]) == per_shard[0][0] and sorted(gpus["device_index"]) == [0, 1]
    first = next(n for (u, n), f in zip(per_shard, shards, strict=True)
                 if f.name == meta[SHARDS_KEY][0]["file"])
    assert samples == first  # the first recorder's samples; the other's of the same GPUs dropped
    assert [x["pid_offset"] for x in meta[SHARDS_KEY]] == [0, 0]
    assert all(p < PID_STRIDE for p in pids)
    assert [d for d, _ in users] == [0, 1] and all(p in pids for _, p in users)
    assert sorted(engines["source"]) == ["inproc", "inproc"] and "incomplete_reason" not in meta
    # each rank equal to that engine's own /metrics counters of the same run (saved with it)
    from tests.support.dp import per_engine_sums

    run = json.loads((ROOT / "bench" / "results" / "gpu_h200x2_multinode_dp.json").read_text())
    assert per_engine_sums(GPU_DP_NODES) == {int(e): c for e, c in run["server"].items()}
