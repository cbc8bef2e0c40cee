"""``kvscope attach`` against one real vLLM api_server (tiny CPU model) for the whole module.

Run under the engine lock: ``flock /tmp/kvscope-engine.lock python -m pytest tests/test_attach_live.py``.
The server gets 24 KV blocks, prefix caching and KV events on free ports; the workload shares
prefixes and overflows the cache so that preemptions, prefix hits, evictions and re-stores happen.
The last test kills the server, so it must stay last in this file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from profiler.analysis.diagnosis import diagnose
from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.kv_events import kv_event_summary
from profiler.analysis.whatif import analyse
from profiler.attach.metrics import CounterTracker, parse_metrics
from profiler.session.reader import open_session
from tests.support import server as srv
from tests.support.dashboard import go, open_app
from tests.support.engine import KVSCOPE
from tests.support.ports import free_port
from tests.support.server import Server
from tests.support.tinymodel import build_tiny_llama
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

BLOCKS = 24
MAX_TOKENS = 32
SERVER_COUNTERS = srv.COUNTERS
"""kvscope step columns and the vLLM 0.32 server counters they sum to."""


def start_attach(url: str | list[str], session: Path, *extra: str) -> subprocess.Popen[str]:
    urls = [url] if isinstance(url, str) else url
    proc = subprocess.Popen(
        [*KVSCOPE, "attach", *urls, "--session", str(session), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if session.exists():
            try:
                with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
                    if c.execute("SELECT 1 FROM events WHERE kind='attach_start'").fetchone():
                        return proc
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("attach did not start")


def session_sums(session: Path) -> dict[str, float]:
    """Sums of the server-counter columns over the steps attach has committed so far."""
    cols = ", ".join(f"COALESCE(SUM({c}), 0)" for c in SERVER_COUNTERS)
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return dict(zip(SERVER_COUNTERS, c.execute(f"SELECT {cols} FROM steps").fetchone(), strict=True))


def wait_scraped(session: Path, url: str, before: dict[str, float], timeout_s: float = 30) -> None:
    """Wait until attach has scraped and committed everything the (idle) server counted since
    ``before``: then stopping it loses nothing."""
    seen: dict[str, dict[str, float]] = {}

    def caught_up() -> bool:
        now = srv.counters(url)
        seen["server"] = {k: now[k] - before[k] for k in SERVER_COUNTERS}
        seen["session"] = session_sums(session)
        return seen["session"] == seen["server"]

    try:
        wait_until(caught_up, timeout_s, "attach to scrape the server's final counters", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None


def steps_committed(session: Path) -> int:
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return int(c.execute("SELECT COUNT(*) FROM steps").fetchone()[0])


def stop_attach(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = str(build_tiny_llama(tmp_path_factory.mktemp("model")))
    kv_port, replay_port = free_port(), free_port()
    cfg = srv.kv_events_config(f"tcp://*:{kv_port}", f"tcp://*:{replay_port}")
    with srv.running_server(sys.executable, model, tmp_path_factory.mktemp("server"), blocks=BLOCKS,
                            extra=("--kv-events-config", cfg)) as s:
        yield s


@dataclass
class Run:
    session: Path
    before: dict[str, float]
    after: dict[str, float]
    before_text: str
    after_text: str
    codes: list[int]
    rc: int
    stderr: str


@pytest.fixture(scope="module")
def run(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One attach with KV events over three waves of requests; server counters around it.

    Eight ~600-token prefixes (40 blocks) cycle through the 24-block cache, so prefixes are
    evicted and recomputed (re-stored) again and again: the session thrashes.
    """
    session = tmp_path_factory.mktemp("attach") / "live.kvscope"
    before_text = httpx.get(server.url + "/metrics").text
    before = srv.counters(server.url)
    proc = start_attach(server.url, session, "--interval-s", "0.25", "--kv-events", "auto")
    codes = srv.drive(server.url, server.model, waves=3, per_wave=16, prefixes=8, max_tokens=MAX_TOKENS)
    srv.wait_idle(server.url)
    wait_scraped(session, server.url, before)
    rc, err = stop_attach(proc)
    after = srv.counters(server.url)
    return Run(session, before, after, before_text, httpx.get(server.url + "/metrics").text,
               codes, rc, err)


def test_session_counters_equal_server_deltas(run: Run) -> None:
    assert run.rc == 0, run.stderr
    assert run.codes and all(c == 200 for c in run.codes)
    s = open_session(run.session)
    steps = s.table("steps")
    assert len(steps) > 4 and (steps["scraped"] == 1).all()
    for column in SERVER_COUNTERS:
        assert steps[column].sum() == run.after[column] - run.before[column], column
    # the workload must exercise what kvscope is for, or the equalities above prove little
    assert run.after["preemptions"] - run.before["preemptions"] > 0
    assert run.after["prefix_hits_tokens"] - run.before["prefix_hits_tokens"] > 0
    assert steps["generation_tokens"].sum() == MAX_TOKENS * len(run.codes)
    assert steps["finished"].sum() == len(run.codes)


def test_engine_row_and_meta(run: Run, server: Server) -> None:
    s = open_session(run.session)
    eng = s.table("engines")
    assert len(eng) == 1
    row = eng.iloc[0]
    assert (row.source, row.label, row.model, row.engine_index) == ("scrape", server.url, server.model, 0)
    assert (row.block_size, row.num_gpu_blocks, row.enable_prefix_caching) == (128, BLOCKS, 1)
    assert row.vllm_version == httpx.get(server.url + "/version").json()["version"]
    meta = s.meta()
    assert meta["ended_unix_s"] >= meta["started_unix_s"]
    assert "incomplete_reason" not in meta
    assert meta["attach_urls"] == [server.url]
    assert len(s.table("gaps")) == 0
    steps = s.table("steps")
    assert steps["kv_usage_frac"].between(0, 1).all() and steps["kv_usage_frac"].max() > 0
    assert steps["running"].max() > 0


def test_server_processes_found_from_port(run: Run, server: Server) -> None:
    procs = open_session(run.session).table("processes")
    roles = dict(zip(procs["pid"], procs["role"], strict=True))
    assert "attach" in roles.values()
    assert roles.get(server.proc.pid) == "frontend"
    assert {"engine_core", "worker"} <= set(roles.values())
    events = open_session(run.session).table("events")
    # no GPU here: NVML sampling is either working or said why it is off
    import pynvml

    try:
        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError:
        has_gpu = False
    if has_gpu:
        assert len(open_session(run.session).table("gpu_samples")) > 0
    else:
        off = events[events["kind"] == "nvml_off"]
        assert len(off) == 1 and off.iloc[0]["message"].startswith("GPU memory sampling off")


def test_kv_events_arrived_and_restores_found(run: Run) -> None:
    s = open_session(run.session)
    kv = s.table("kv_events")
    assert {"stored", "removed"} <= set(kv["kind"])
    assert (kv["source"] == "live").sum() > 0
    summary = kv_event_summary(s)
    assert summary.has_events and summary.engine_ids == [int(s.table("engines").engine_id[0])]
    assert summary.evicted_blocks > 0
    assert summary.restored_blocks > 0, "8 prefixes over 24 blocks must re-store evicted blocks"
    # evicted and re-stored within one engine step (one KV-event batch, one timestamp) reads as 0 s
    assert (summary.evicted_s >= 0).all() and summary.evicted_s.max() > 0
    assert summary.median_evicted_s is not None and 0 < summary.median_evicted_s < 300
    res = summary.resident
    assert (res["resident_blocks"] <= res["capacity_blocks"]).all()
    assert res["resident_blocks"].max() > 0
    assert summary.rates["evictions_per_s"].sum() * summary.bin_s == pytest.approx(summary.evicted_blocks)
    ev = s.table("events")
    summ = ev[ev["kind"] == "kv_events_summary"]
    assert len(summ) == 1 and json.loads(summ.iloc[0]["details_json"])["malformed"] == 0


def test_parser_counter_reset_and_old_names_on_real_text(run: Run) -> None:
    after = parse_metrics(run.after_text, 2.0)
    before = parse_metrics(run.before_text, 1.0)
    tracker = CounterTracker()
    assert tracker.update(after.engines["0"].counters) is None
    # the counters going down is what a restarted server looks like
    reset = tracker.update(before.engines["0"].counters)
    assert reset is not None and reset.reset
    assert reset.values["generation_tokens"] == before.engines["0"].counters["generation_tokens"]
    # vLLM 0.20-era names map to the same columns
    old = (run.after_text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
           .replace("vllm:prefix_cache_", "vllm:gpu_prefix_cache_"))
    assert "vllm:gpu_prefix_cache_hits_total" in old
    renamed = parse_metrics(old, 2.0).engines["0"]
    assert renamed.counters == after.engines["0"].counters
    assert renamed.gauges == after.engines["0"].gauges


def test_dashboard_page_renders_kv_views(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    at = go(open_app(monkeypatch, run.session), "kv_events")
    assert at.title[0].value.startswith("KV-cache events · ")
    assert len(at.get("vega_lite_chart")) >= 3
    assert not any("No KV events" in m.value for m in [*at.markdown, *at.info])


def test_bench_serve_while_attached(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's own load generator against the server while attached (no KV events this time)."""
    session = tmp_path / "bench.kvscope"
    before = srv.counters(server.url)
    proc = start_attach(server.url, session, "--interval-s", "0.25")
    bench = subprocess.run(
        [sys.executable, "-m", "profiler.attach.bench_serve", "--backend", "vllm", "--base-url", server.url, "--model", server.model,
         "--tokenizer", server.model, "--dataset-name", "random", "--random-input-len", "300",
         "--random-output-len", "8", "--random-prefix-len", "256", "--num-prompts", "8",
         "--ignore-eos", "--seed", "0", "--save-result", "--result-dir", str(tmp_path),
         "--result-filename", "bench.json", "--disable-tqdm"],
        env=srv.server_env(), capture_output=True, text=True, timeout=300,
    )
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    srv.wait_idle(server.url)
    wait_scraped(session, server.url, before)
    rc, err = stop_attach(proc)
    after = srv.counters(server.url)
    assert rc == 0, err
    result = json.loads((tmp_path / "bench.json").read_text())
    s = open_session(session)
    steps = s.table("steps")
    for column in SERVER_COUNTERS:
        assert steps[column].sum() == after[column] - before[column], column
    assert result["completed"] == 8
    assert steps["finished"].sum() == result["completed"]
    assert steps["generation_tokens"].sum() == result["total_output_tokens"] == 8 * 8
    # without --kv-events nothing is subscribed and the dashboard page says so
    assert len(s.table("kv_events")) == 0
    at = go(open_app(monkeypatch, session), "kv_events")
    assert at.title[0].value.startswith("KV-cache events · ")
    assert any("No KV events in this session" in m.value for m in [*at.markdown, *at.info])


def test_two_servers_in_one_session(server: Server, tmp_path: Path) -> None:
    """Two URLs (the same server reached as 127.0.0.1 and as localhost): two labelled engines."""
    session = tmp_path / "two.kvscope"
    other = server.url.replace("127.0.0.1", "localhost")
    before = srv.counters(server.url)
    t0 = time.monotonic()
    proc = start_attach([server.url, other], session, "--kv-events", "auto", "--duration-s", "10")
    codes = srv.drive(server.url, server.model, waves=1, per_wave=6, max_tokens=MAX_TOKENS)
    srv.wait_idle(server.url)
    assert time.monotonic() - t0 < 9, "the workload must end inside --duration-s"
    _, err = proc.communicate(timeout=60)  # --duration-s ends it
    rc = proc.returncode
    after = srv.counters(server.url)
    assert rc == 0 and codes == [200] * 6, err
    s = open_session(session)
    eng = s.table("engines").set_index("label")
    assert sorted(eng.index) == sorted([server.url, other])
    steps = s.table("steps")
    for url in (server.url, other):
        mine = steps[steps["engine_id"] == eng.loc[url, "engine_id"]]
        for column in SERVER_COUNTERS:
            assert mine[column].sum() == after[column] - before[column], (url, column)
    kv = s.table("kv_events")
    assert set(kv["engine_id"]) == set(eng["engine_id"])  # one subscriber per server
    # both subscribers heard the same publisher: identical per-engine counts
    per = kv_event_summary(s).per_engine
    assert len(per) == 2 and per["stored_blocks"].nunique() == 1 and per["stored_blocks"].iloc[0] > 0
    assert per["evicted_blocks"].nunique() == 1 and per["restored_blocks"].nunique() == 1
    procs = s.table("processes")
    assert procs["pid"].is_unique and server.proc.pid in set(procs["pid"])
    assert s.meta()["attach_urls"] == [server.url, other]


def test_whatif_and_thrash_from_kv_events(run: Run) -> None:
    s = open_session(run.session)
    assert s.scalar("SELECT COUNT(*) FROM prompt_blocks") == 0  # attach: KV events are all there is
    w = analyse(s)
    assert w.trace is None and w.curve.source == "kv_events"
    assert w.curve.hit_rate(BLOCKS - 1) is None  # below the session's size: not predicted
    assert w.curve.hit_rate(BLOCKS) == pytest.approx(w.actual.hit_rate)
    rates = [w.curve.hit_rate(n) for n in (BLOCKS, BLOCKS * 2, BLOCKS * 8)]
    summary = kv_event_summary(s)
    assert summary.restored_blocks > 0
    assert rates == sorted(rates) and rates[-1] > rates[0]
    extra = (w.curve.compulsory_hit_tokens - w.curve.hit_tokens(BLOCKS)) / w.curve.block_size
    assert extra == summary.restored_blocks  # every re-store becomes a hit with room enough
    assert w.curve.blocks_for(0.9) >= BLOCKS
    # the workload is built to thrash (8 ~600-token prefixes through 24 blocks)
    assert summary.restore_frac >= th.RESTORE_THRASH_FRAC, summary.restore_frac
    (f,) = [f for f in diagnose(s) if f.code == "PREFIX_THRASH"]
    m = f.metrics
    assert (m["restored_blocks"], m["stored_blocks"]) == (summary.restored_blocks, summary.stored_blocks)
    assert m["needed_blocks"] == w.curve.blocks_for(th.THRASH_TARGET_OF_MAX)


def test_zz_server_killed_mid_attach(server: Server, tmp_path: Path) -> None:
    """Last test: kill -9 the server while attached; the session stays readable, marked incomplete."""
    session = tmp_path / "killed.kvscope"
    proc = start_attach(server.url, session, "--interval-s", "0.25", "--kv-events", "auto",
                        "--give-up-s", "2")
    wait_until(lambda: steps_committed(session) >= 3, 30, "attach to commit 3 scraped steps")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if "lost" in ln]
    assert lines and server.url in lines[0]
    s = open_session(session)
    meta = s.meta()
    assert "ended_unix_s" not in meta
    assert server.url in meta["incomplete_reason"]
    assert len(s.table("steps")) >= 3  # what was scraped before the kill is kept
    gaps = s.table("gaps")
    assert len(gaps) == 1 and gaps.iloc[0]["source"] == "metrics"
    assert gaps.iloc[0]["t_end_unix_s"] > gaps.iloc[0]["t_start_unix_s"]
    kinds = set(s.table("events")["kind"])
    assert {"scrape_error", "server_lost"} <= kinds
