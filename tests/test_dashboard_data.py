"""Dashboard data layer on real recorded sessions: discovery, loading, bucketing, derived series."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard.data import compare, derive, replay
from dashboard.data.downsample import minmax_indices, rolling_ratio
from dashboard.data.reports import report_memo
from dashboard.data.session import file_signature, load_recent, load_session
from dashboard.data.sources import ENV_SESSIONS_DIR, ENV_UI_SESSIONS, discover_sessions
from dashboard.data.steps import BASE_BUCKETS, View
from profiler.errors import SessionFormatError
from profiler.session.writer import SessionWriter

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ROOT / "sessions"
CPU_SESSION = SESSIONS / "kv_saturation.kvscope"
GPU_SESSION = SESSIONS / "gpu_h200_kv_pressure.kvscope"


def sql(path: Path, query: str, params: tuple = ()) -> list[tuple]:
    """Ground truth straight from SQLite (independent of the dashboard code)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def start_unix_s(path: Path) -> float:
    return float(sql(path, "SELECT value FROM meta WHERE key = 'started_unix_s'")[0][0])


@pytest.mark.parametrize("path", [CPU_SESSION, GPU_SESSION, SESSIONS / "prefix_thrash.kvscope"],
                         ids=lambda p: p.stem)
def test_summary_matches_sqlite(path: Path) -> None:
    data = load_session(path)
    n, pre, gen, hits = sql(path, "SELECT COUNT(*), SUM(preemptions), SUM(generation_tokens), "
                                  "SUM(prefix_hits_tokens) FROM steps")[0]
    assert data.steps.total_steps == n > 0
    fine = data.steps.fine
    assert len(fine) <= BASE_BUCKETS + 1
    assert fine["preemptions"].sum() == pre
    assert fine["generation_tokens"].sum() == gen
    assert fine["prefix_hits_tokens"].sum() == hits
    kv_max = sql(path, "SELECT MAX(kv_usage_frac) FROM steps")[0][0]
    assert fine["kv_usage_frac_max"].max() == pytest.approx(kv_max)
    assert data.duration_s > 0
    assert data.num_blocks() == sql(path, "SELECT num_gpu_blocks FROM engines")[0][0]


def test_zoomed_views_are_exact_sums_of_their_range() -> None:
    """Every zoom level (summary re-bucketed, or raw rows when deep) keeps the range's totals."""
    data = load_session(CPU_SESSION)
    start = start_unix_s(CPU_SESSION)
    f = data.steps.fine
    first, last = float(f["t_lo_s"].min()), float(f["t_hi_s"].max())
    raw_reads = []
    for frac0, frac1 in ((0.0, 1.0), (0.25, 0.75), (0.5, 0.51), (0.3, 0.3005)):
        t0 = first + (last - first) * frac0
        t1 = first + (last - first) * frac1
        view = View(t0, t1, 300)
        b = data.buckets(view)
        n, pre, prompt = sql(CPU_SESSION, "SELECT COUNT(*), COALESCE(SUM(preemptions), 0), "
                             "COALESCE(SUM(prompt_tokens), 0) FROM steps WHERE t_unix_s BETWEEN ? AND ?",
                             (start + t0, start + t1))[0]
        assert len(b) <= view.buckets
        assert not b.duplicated(["engine_id", "bucket"]).any()
        raw_reads.append(data.steps.needs_raw(view))
        if raw_reads[-1]:
            assert b["n_steps"].sum() == n
            assert b["preemptions"].sum() == pre
            assert b["prompt_tokens"].sum() == prompt
        else:  # whole fine buckets: the edges may hold a few steps outside [t0, t1]
            assert n <= b["n_steps"].sum() <= n + 2 * f["n_steps"].max()
        assert (b["bucket"] >= 0).all() and (b["bucket"] < view.buckets).all()
    assert raw_reads[0] is False and raw_reads[-1] is True  # both ways of reading are checked


def test_a_view_ending_on_a_step_has_one_row_per_bucket() -> None:
    data = load_session(CPU_SESSION)
    last = float(data.steps.fine["t_hi_s"].max())
    for view in (View(last - 0.5, last, 50), View(last - 0.01, last, 1000)):
        b = data.buckets(view)
        assert not b.duplicated(["engine_id", "bucket"]).any()
        assert b["bucket"].max() == view.buckets - 1


def test_minmax_indices_keep_every_bucket_extreme() -> None:
    rows = sql(CPU_SESSION, "SELECT t_unix_s, kv_usage_frac, waiting FROM steps ORDER BY t_unix_s")
    arr = np.array(rows, dtype=float)
    t = np.tile(arr[:, 0], 40) + np.repeat(np.arange(40), len(arr)) * (arr[-1, 0] - arr[0, 0] + 1)
    for col in (1, 2):
        y = np.tile(arr[:, col], 40)
        t0, t1, nb = float(t[0]), float(t[-1]), 500
        idx = minmax_indices(t, y, t0, t1, nb)
        assert len(idx) <= 4 * nb < len(t)
        width = (t1 - t0) / nb
        b_all = np.clip(((t - t0) / width).astype(int), 0, nb - 1)
        b_kept = b_all[idx]
        for b in np.unique(b_all)[::7]:
            assert y[idx][b_kept == b].max() == y[b_all == b].max()
            assert y[idx][b_kept == b].min() == y[b_all == b].min()
    small = minmax_indices(arr[:, 0], arr[:, 1], float(arr[0, 0]), float(arr[-1, 0]), len(arr))
    assert len(small) == len(arr)


def test_rolling_ratio() -> None:
    num = np.array([1, 0, 3, np.nan, 2], dtype=float)
    den = np.array([2, 0, 3, 0, 4], dtype=float)
    out = rolling_ratio(num, den, 2)
    assert out[0] == pytest.approx(0.5)
    assert out[1] == pytest.approx(0.5)
    assert out[2] == pytest.approx(1.0)
    assert out[3] == pytest.approx(1.0)
    assert out[4] == pytest.approx(0.5)


def test_discovery_env_and_folders(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    shutil.copy(SESSIONS / "healthy.kvscope", user / "healthy.kvscope")
    found = discover_sessions({ENV_SESSIONS_DIR: str(user)})
    bundled = sorted(SESSIONS.glob("*.kvscope"))
    assert [s.path for s in found] == [*bundled, user / "healthy.kvscope"]
    assert len({s.label for s in found}) == len(found)
    assert found[-1].origin == "user"
    given = discover_sessions({ENV_UI_SESSIONS: f"{CPU_SESSION}:{user}"})
    assert [s.path for s in given] == [CPU_SESSION, user / "healthy.kvscope"]
    assert all(s.origin == "cli" for s in given)


def _bad_files(tmp: Path) -> dict[str, Path]:
    garbage = tmp / "garbage.kvscope"
    garbage.write_bytes(b"this is not a session" * 50)
    truncated = tmp / "truncated.kvscope"
    truncated.write_bytes(CPU_SESSION.read_bytes()[: CPU_SESSION.stat().st_size // 3])
    newer = tmp / "newer.kvscope"
    shutil.copy(CPU_SESSION, newer)
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    empty = tmp / "empty.kvscope"
    empty.write_bytes(b"")
    return {"garbage": garbage, "truncated": truncated, "newer": newer, "empty": empty}


def test_bad_sessions_raise_one_line_errors(tmp_path: Path) -> None:
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(SessionFormatError) as exc:
            data = load_session(path)
            data.requests()
        msg = str(exc.value)
        assert msg and "\n" not in msg, (name, msg)
        if name != "newer":  # the version check does not name the file; the page prefixes it
            assert str(path) in msg, (name, msg)
    with pytest.raises(SessionFormatError, match="newer"):
        load_session(tmp_path / "newer.kvscope")


def test_load_recent_follows_a_growing_session(tmp_path: Path) -> None:
    live = tmp_path / "live.kvscope"
    shutil.copy(CPU_SESSION, live)
    before, view0, _ = load_recent(live, window_s=5.0)
    sig0 = file_signature(live)
    writer = SessionWriter(live, flush_interval_s=0.05)
    now = time.time()
    for i in range(50):
        writer.append("steps", (1, now + i * 0.01, 3, 1, 0.5, 0, 0, 0, 0, 0, 0, 7, 0, 0))
    writer.flush()
    after, view1, _ = load_recent(live, window_s=5.0)
    writer.close()
    assert file_signature(live) != sig0
    assert view1.t1_s > view0.t1_s
    assert after.steps.total_steps == 50  # the window holds only the new steps
    assert after.steps.fine["generation_tokens"].sum() == 350
    assert before.steps.total_steps > 0


def test_preemption_episodes_and_kv_demand() -> None:
    data = load_session(CPU_SESSION)
    pre = data.preempting_steps()
    total = sql(CPU_SESSION, "SELECT SUM(preemptions) FROM steps")[0][0]
    assert total > 0
    ep = derive.preemption_episodes(pre, gap_s=0.05)
    assert ep["preemptions"].sum() == total
    assert (ep["t_end_s"] >= ep["t_start_s"]).all()
    assert (ep["t_start_s"].iloc[1:].to_numpy() - ep["t_end_s"].iloc[:-1].to_numpy() > 0.05).all()
    reqs = data.requests()
    assert len(reqs) == sql(CPU_SESSION, "SELECT COUNT(*) FROM requests")[0][0]
    f = data.steps.fine
    view = View(0.0, data.duration_s, 400)
    demand = derive.kv_demand(reqs, view)
    assert len(demand) == 400
    before_first = demand[demand["t_s"] < reqs["t_arrival_s"].min()]
    assert len(before_first) > 0 and (before_first["demand_tokens"] == 0).all()  # start-up: no demand
    capacity = data.num_blocks() * data.block_size_tokens()
    # KV saturation: the estimated demand exceeds the cache while requests queue.
    assert demand["demand_tokens"].max() > capacity
    assert demand["in_system"].max() <= len(reqs)
    assert float(f["waiting_max"].max()) > 0



@pytest.mark.parametrize("name", ["gpu_h200_healthy", "gpu_h200_spec_off", "gpu_h200x2_tp2", "spec_ngram"])
def test_kv_demand_is_never_below_zero_and_zero_with_nobody_in_the_system(name: str) -> None:
    """The demand sums each request's +tokens at arrival and -tokens at finish: over these
    sessions' serving periods that left -1e-9 to +4e-11 tokens of float residue, drawn as a
    y-axis below zero. A demand is never negative, and with no request in the system it is 0."""
    data = load_session(SESSIONS / f"{name}.kvscope")
    demand = derive.kv_demand(data.requests(), View(*data.serving_range(), 400))
    assert (demand["demand_tokens"] >= 0).all()
    idle = demand[demand["in_system"] == 0]
    assert len(idle) > 0 and (idle["demand_tokens"] == 0).all()
    assert demand["demand_tokens"].max() > 0

def test_report_deltas_and_config_differences() -> None:
    a, b = load_session(SESSIONS / "healthy.kvscope"), load_session(CPU_SESSION)
    ra, _ = report_memo(a.path)
    rb, _ = report_memo(b.path)
    d = compare.key_number_deltas(compare.side(a, ra, a.requests()), compare.side(b, rb, b.requests()))
    assert d.attrs["why_no_verdict"] == "different workloads (96 vs 128 finished requests)"
    d = d.set_index("metric")
    assert d.loc["preemptions", "B − A"].startswith(f"+{(rb['preemptions'] or 0) - (ra['preemptions'] or 0):,}")
    assert d.loc["KV blocks", "A"] == f"{ra['engine']['num_gpu_blocks']:,}"
    assert d.loc["preemptions", "B is"] == ""  # not comparable: no verdict at all
    assert d.loc["prefix hit rate", "A"] == f"{ra['prefix_cache']['hit_rate']:.1%}"  # fractions as percentages
    diff = compare.config_differences(a.engines, b.engines).set_index("setting")
    assert diff.loc["num_gpu_blocks", "A"] == str(ra["engine"]["num_gpu_blocks"])


def test_compare_verdicts_only_beyond_noise_on_comparable_sessions() -> None:
    """kv_pressure vs healthy on one H200: the same 512 requests of the same model. Preemptions and
    latency differ far beyond noise; hit rates 97.7 % vs 97.5 % do not; memory gets no verdict."""
    a, b = load_session(GPU_SESSION), load_session(SESSIONS / "gpu_h200_healthy.kvscope")
    sa = compare.side(a, report_memo(a.path)[0], a.requests())
    sb = compare.side(b, report_memo(b.path)[0], b.requests())
    d = compare.key_number_deltas(sa, sb)
    assert d.attrs["why_no_verdict"] is None
    v = d.set_index("metric")["B is"]
    assert v["preemptions"] == "better" and v["end-to-end p95"] == "better" and v["TTFT p50"] == "better"
    assert v["prefix hit rate"] == "same (within noise)"
    assert v["peak GPU memory"] == v["KV cache held"] == v["peak KV usage"] == ""
    assert "duration (s)" not in set(d["metric"])  # start-up included: not compared
    same = compare.key_number_deltas(sa, sa).set_index("metric")["B is"]
    assert set(same) <= {"same (within noise)", ""}


def test_replay_cursor_state_and_changes() -> None:
    data = load_session(CPU_SESSION)
    rows = sql(CPU_SESSION, "SELECT t_unix_s, running, waiting, kv_usage_frac FROM steps "
                            "ORDER BY t_unix_s LIMIT 1 OFFSET 2000")[0]
    prev = sql(CPU_SESSION, "SELECT running, waiting FROM steps ORDER BY t_unix_s LIMIT 1 OFFSET 1999")[0]
    t = rows[0] - start_unix_s(CPU_SESSION)
    cs = replay.cursor_state(data.steps_around(t), t, data.num_blocks())
    assert cs.t_s == pytest.approx(t)
    assert cs.now["running"] == rows[1] and cs.now["waiting"] == rows[2]
    assert cs.now["kv_blocks_used"] == round(rows[3] * data.num_blocks())
    ch = replay.changes(cs).set_index("what")
    assert ch.loc["waiting requests", "change"] == rows[2] - prev[1]
    assert cs.next_t_s is not None and cs.next_t_s > t
    none = replay.cursor_state(data.steps_around(0.0), 0.0, data.num_blocks())
    assert none.t_s is None and none.next_t_s is not None


def test_startup_waterfall_shows_the_cache_held_not_the_room_start_up_measured() -> None:
    data = load_session(GPU_SESSION)
    row = data.startup_memory.iloc[0]
    held = 600 * 2 * 2**20  # num_gpu_blocks_override 600 blocks of 2 MiB (kv_cache_config event)
    wf = derive.startup_waterfall(row, kv_held_bytes=held, kv_label="KV cache held").set_index("label")
    assert wf.loc["device total", "value_gib"] == pytest.approx(row["total_bytes"] / 2**30)
    assert wf.loc["KV cache held", "value_gib"] == pytest.approx(held / 2**30)
    assert row["kv_cache_bytes"] > 80 * held  # start-up measured room for far more
    used = sum(row[c] for c, _ in derive.WATERFALL_STEPS if c != "kv_cache_bytes") + held
    assert wf.loc["left in budget", "value_gib"] == pytest.approx((row["budget_bytes"] - used) / 2**30)
    oom = load_session(SESSIONS / "gpu_h200_oom_startup.kvscope").startup_memory.iloc[0]
    assert oom["kv_cache_bytes"] < 0  # start-up found no room: no KV bar, an over-the-budget bar
    bars = derive.startup_waterfall(oom).set_index("label")
    assert not any(label.startswith("KV cache") for label in bars.index)
    over = bars.loc["over the budget (no room for a KV cache)", "value_gib"]
    assert over == pytest.approx(-oom["kv_cache_bytes"] / 2**30, rel=1e-6)
    lat = derive.latency_percentiles(data.requests()).set_index("metric")
    assert lat.loc["TTFT", "p95_s"] == pytest.approx(data.requests()["ttft_s"].quantile(0.95))


def test_first_open_keeps_the_cache_key(tmp_path: Path) -> None:
    """Opening a checkpointed session creates an empty WAL; the key of its contents stays the same,
    so a summary warmed before serving is still the one the first page uses."""
    path = tmp_path / "copy.kvscope"
    shutil.copy(SESSIONS / "healthy.kvscope", path)
    conn = sqlite3.connect(path)  # as recorded: WAL mode, checkpointed and closed (no -wal left)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert not Path(f"{path}-wal").exists()
    past = path.stat().st_mtime - 60
    os.utime(path, (past, past))  # file times are coarse: make the new WAL's differ from the file's
    before = file_signature(path)
    load_session(path)
    assert Path(f"{path}-wal").exists() and Path(f"{path}-wal").stat().st_size == 0
    assert file_signature(path) == before
    with sqlite3.connect(path) as conn:  # a real write still changes it
        conn.execute("INSERT INTO events (t_unix_s, kind, message) VALUES (1, 'note', 'x')")
    assert file_signature(path) != before
