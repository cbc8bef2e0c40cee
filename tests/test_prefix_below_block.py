"""Shared prefixes shorter than one KV block, on a real CPU engine, at two block sizes.

The same workload (two ~100-token shared prefixes, short tails) runs at vLLM CPU's default block
size of 128, where no request has a full block of shared tokens, and at 64 with the same KV
memory. At 128 the prefix cache is queried and never hits: PREFIX_BELOW_BLOCK must say so and
name 64; the block-size what-if from the 128 session must predict the hit rate the 64 run measures.
An independent StatLoggerBase in each run gives vLLM's own prefix counts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from profiler.analysis.whatif import block_size_curve, chunk_trace, load_trace, miss_ratio_curve
from profiler.session.reader import open_session
from tests.support import scenarios as sc
from tests.support.engine import kvscope

pytestmark = pytest.mark.engine

BELOW = sc.Scenario("below_block_128", blocks=16, requests=24, prefixes=2, prefix_len_tokens=100,
                    max_tokens=16, max_model_len=512, concurrency=2)
"""Two 100-token prefixes, 24 requests, two clients; 16 blocks of 128 tokens."""
AT_64 = dataclasses.replace(BELOW, name="below_block_64", blocks=(BELOW.blocks - 1) * 2 + 1,
                            extra={"block_size": 64})
"""The same work and KV memory (the same token slots) in blocks of 64."""


def _run(s: sc.Scenario, model: Path, base: Path) -> tuple[Path, dict]:
    rec = sc.recorded(s, model, base)
    assert rec.returncode == 0, rec.output_tail
    return rec.path, json.loads(sc.counts_path(rec.path).read_text())


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("below")
    return {128: _run(BELOW, tiny_model, base), 64: _run(AT_64, tiny_model, base)}


def test_prefix_below_block_names_the_block_size_that_catches_it(runs: dict) -> None:
    path, counts = runs[128]
    assert counts["block_size"] == 128
    assert counts["prefix_queries"] > 0 and counts["prefix_hits"] == 0  # vLLM's own counts
    out = kvscope("report", "--json", str(path))
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    found = [f for f in rep["findings"] if f["code"] == "PREFIX_BELOW_BLOCK"]
    assert len(found) == 1, [f["code"] for f in rep["findings"]]
    f = found[0]
    assert f["settings"] == {"block_size": 64}
    assert f["metrics"]["queries_tokens"] == counts["prefix_queries"]
    assert 64 <= f["metrics"]["shared_prefix_tokens_max"] < 128
    assert "--block-size 64" in f["recommendation"]


def test_block_size_whatif_predicts_the_64_token_run(runs: dict) -> None:
    path128, _ = runs[128]
    path64, counts64 = runs[64]
    measured = counts64["prefix_hits"] / counts64["prefix_queries"]
    assert counts64["block_size"] == 64 and measured > 0.2  # the smaller block really hits
    with open_session(path128) as s:
        points = {p.block_size: p for p in block_size_curve(s)}
    assert points[128].measured_hit_rate == 0.0 and points[128].hit_rate == 0.0
    assert points[64].num_blocks == AT_64.blocks
    assert points[64].hit_rate == pytest.approx(measured, abs=0.05)
    out = kvscope("whatif", str(path128), "--block-sizes", "32", "64", "128", "--json")
    assert out.returncode == 0, out.stderr
    by_size = {b["block_size"]: b for b in json.loads(out.stdout)["block_sizes"]}
    assert by_size[64]["hit_rate"] == points[64].hit_rate


def test_chunk_replay_at_the_engines_block_size_is_the_prompt_block_replay(runs: dict) -> None:
    path, _ = runs[64]
    with open_session(path) as s:
        blocks = miss_ratio_curve(load_trace(s))
        chunks = miss_ratio_curve(chunk_trace(s, 64))
    assert chunks.compulsory_hit_tokens == blocks.compulsory_hit_tokens > 0
    assert list(chunks.cum_hit_tokens) == list(blocks.cum_hit_tokens)
