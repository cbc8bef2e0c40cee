"""``kvscope attach`` ingests vLLM's block residency histograms (``--kv-cache-metrics``) from a real
CPU server and checks them against its own model (KV events of the same server).

The server samples every block (``--kv-cache-metrics-sample 1.0``) and publishes KV events; the
workload overflows its 24 blocks so blocks are evicted and reused. The reference is the server's
own ``/metrics`` before and after the load.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from profiler.analysis import residency
from profiler.analysis.kv_events import kv_event_summary
from profiler.session.reader import open_session
from tests.support import server as srv
from tests.support.engine import engine_lock
from tests.support.ports import free_port
from tests.support.tinymodel import build_tiny_llama
from tests.test_attach_live import start_attach, stop_attach, wait_scraped

pytestmark = pytest.mark.engine

FAMILIES = {"lifetime": "vllm:kv_block_lifetime_seconds",
            "idle_before_evict": "vllm:kv_block_idle_before_evict_seconds",
            "reuse_gap": "vllm:kv_block_reuse_gap_seconds"}


def histogram_totals(text: str) -> dict[str, tuple[float, float]]:
    """(count, sum) of each residency histogram in a /metrics body."""
    out: dict[str, list[float]] = {m: [0.0, 0.0] for m in FAMILIES}
    names = {v: k for k, v in FAMILIES.items()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for suffix, i in (("_count", 0), ("_sum", 1)):
                if s.name.endswith(suffix) and s.name[: -len(suffix)] in names:
                    out[names[s.name[: -len(suffix)]]][i] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    base = tmp_path_factory.mktemp("residency")
    model = str(build_tiny_llama(base / "model"))
    port = free_port()
    extra = ("--kv-cache-metrics", "--kv-cache-metrics-sample", "1.0",
             "--kv-events-config", srv.kv_events_config(f"tcp://*:{port}", None))
    with engine_lock(), srv.running_server(sys.executable, model, base, blocks=24,
                                           extra=extra) as server:
        before = srv.counters(server.url)
        before_text = httpx.get(server.url + "/metrics", timeout=10).text
        session = base / "attach.kvscope"
        proc = start_attach(server.url, session, "--interval-s", "0.25",
                            "--kv-events", f"tcp://127.0.0.1:{port}")
        codes = srv.drive(server.url, model, waves=2, per_wave=16, prefixes=3)
        assert set(codes) == {200}
        srv.wait_idle(server.url)
        wait_scraped(session, server.url, before)
        after_text = httpx.get(server.url + "/metrics", timeout=10).text
        code, err = stop_attach(proc)
        assert code == 0, err
        yield session, before_text, after_text


def test_attach_stores_the_servers_residency_histograms(attached: tuple[Path, str, str]) -> None:
    session, before_text, after_text = attached
    before, after = histogram_totals(before_text), histogram_totals(after_text)
    with open_session(session) as s:
        got = residency.vllm_residency(s)
    for metric in FAMILIES:
        count = after[metric][0] - before[metric][0]
        if count == 0:  # nothing observed in this run (a reuse gap needs a sampled block reused)
            assert metric not in got or got[metric].count == 0, metric
            continue
        assert metric in got, metric
        assert got[metric].count == count, metric
        assert got[metric].mean_s == pytest.approx((after[metric][1] - before[metric][1]) / count)
    assert got["lifetime"].count > 0  # the load really evicted sampled blocks
    assert got["lifetime"].p50_s is not None


def test_residency_is_checked_against_kvscopes_kv_event_model(attached: tuple[Path, str, str]) -> None:
    session, _, _ = attached
    with open_session(session) as s:
        check = {r["quantity"]: r for r in residency.residency_check(s)}
        summary = kv_event_summary(s)
        got = residency.vllm_residency(s)
    assert summary.evicted_blocks > 0
    assert check["evictions"]["kvscope"] == summary.evicted_blocks
    # attach does not know the server's sampling fraction: no scaled count is claimed
    assert check["evictions"]["vllm"] is None
    assert summary.evicted_blocks <= got["lifetime"].count  # every cached eviction is a reuse
    assert check["lifetime mean (s)"]["kvscope"] > 0
    assert check["lifetime mean (s)"]["vllm"] == pytest.approx(got["lifetime"].mean_s)
