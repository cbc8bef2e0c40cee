"""The KV-cache group recorder's naming and engine attribution, and the drafter lookup, on fakes
shaped like vLLM 0.26's objects (the GPU runs that found each fault: bench/gpu/README.md).

- vLLM 0.26's MLA models (DeepSeek-V2) have ``MLAAttentionSpec`` groups: the recorder named them
  ``mlaattention``; the analysis (``blocks_per_request``, the report) speaks of ``mla_attention``.
- Under data parallelism every engine core inherits the frontend's ``KVSCOPE_ENGINE_ID`` (rank 0's
  engine): rank 1 of the DP=2 H200 runs stored its group under rank 0's engine; and each engine
  row showed vLLM's frontend total (4,000 blocks) instead of its rank's 2,000.
- vLLM 0.26 runs dense models on its V2 GPU model runner, whose drafter is ``speculator``, not
  ``drafter``: the EAGLE session's ``drafter_weights_bytes`` was n/a.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from profiler.recorder import context, kv_groups
from profiler.recorder.spec_decode import drafter_of, drafter_weights_bytes
from profiler.session.writer import SessionWriter

pytestmark = pytest.mark.unit

VLLM_026_SPECS = {  # vllm/v1/kv_cache_interface.py of vLLM 0.26.0: class -> kvscope's kind
    "FullAttentionSpec": "full_attention", "TQFullAttentionSpec": "tq_full_attention",
    "MLAAttentionSpec": "mla_attention", "HiddenStateCacheSpec": "hidden_state_cache",
    "RSWASpec": "rswa", "ChunkedLocalAttentionSpec": "chunked_local_attention",
    "SlidingWindowSpec": "sliding_window", "SlidingWindowMLASpec": "sliding_window_mla",
    "MambaSpec": "mamba", "EncoderOnlyAttentionSpec": "encoder_only_attention",
    "CrossAttentionSpec": "cross_attention", "SinkFullAttentionSpec": "sink_full_attention",
}


def _spec(name: str, **attrs: object) -> object:
    return type(name, (), attrs)()


def test_group_kinds_keep_acronyms_one_word() -> None:
    assert {n: kv_groups.kind_of(_spec(n)) for n in VLLM_026_SPECS} == VLLM_026_SPECS
    uniform = _spec("UniformTypeKVCacheSpecs",
                    kv_cache_specs={"a": _spec("MLAAttentionSpec"), "b": _spec("MLAAttentionSpec")})
    assert kv_groups.kind_of(uniform) == "mla_attention"


@pytest.fixture
def dp_rank1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An engine core of DP rank 1 recording into a session whose frontend pended engine 1."""
    path = tmp_path / "dp.kvscope"
    SessionWriter(path).close()
    monkeypatch.setenv(context.ENV_SESSION, str(path))
    monkeypatch.setenv(kv_groups.ENV_ENGINE_ID, "1")
    context.set_dp_rank(1)
    kv_groups._rank_engine_id.clear()
    kv_groups._pending_rows.clear()
    yield path
    w = context.writer()
    if w is not None:
        w.close()
    context.set_dp_rank(None)  # type: ignore[arg-type]
    kv_groups._rank_engine_id.clear()
    kv_groups._pending_rows.clear()


def _engine(path: Path, engine_index: int) -> int:
    with sqlite3.connect(path) as c:
        cur = c.execute("INSERT INTO engines (engine_index, source) VALUES (?, 'inproc')", (engine_index,))
        return int(cur.lastrowid or 0)


def _groups(path: Path) -> list[tuple[int | None, str, int]]:
    context.writer().flush()
    with sqlite3.connect(path) as c:
        return c.execute("SELECT engine_id, kind, num_blocks FROM kv_cache_groups").fetchall()


def test_a_dp_rank_stores_its_groups_under_its_own_engine(dp_rank1: Path) -> None:
    config = SimpleNamespace(num_blocks=2000, kv_cache_groups=[SimpleNamespace(
        kv_cache_spec=_spec("FullAttentionSpec", block_size=16, page_size_bytes=65536),
        layer_names=["model.layers.0.self_attn.attn"])])
    assert _engine(dp_rank1, 0) == 1
    # KV-cache start-up: the frontend has not described engine index 1 yet: held back, not
    # stored under rank 0's engine (the environment's)
    assert kv_groups.record_groups(config) == 1
    assert _groups(dp_rank1) == []
    rank1 = _engine(dp_rank1, 1)
    stats = SimpleNamespace(kv_cache_usage=0.0)
    scheduler = SimpleNamespace(kv_cache_manager=None)
    kv_groups.wrap_make_stats(lambda self: stats)(scheduler)  # the first step's stats
    assert _groups(dp_rank1) == [(rank1, "full_attention", 2000)]
    assert kv_groups.engine_id() == rank1 != 1
    with sqlite3.connect(dp_rank1) as c:  # the rank's own blocks (vLLM's frontend knows the sum)
        assert c.execute("SELECT engine_id, num_gpu_blocks FROM engines ORDER BY engine_id").fetchall() == [
            (1, None), (rank1, 2000)]


def test_rank_0_keeps_the_frontends_pending_engine(dp_rank1: Path) -> None:
    context.set_dp_rank(0)
    assert kv_groups.engine_id() == 1


class _Param:
    def __init__(self, ptr: int, numel: int) -> None:
        self.ptr, self.n = ptr, numel

    def data_ptr(self) -> int:
        return self.ptr

    def numel(self) -> int:
        return self.n

    def element_size(self) -> int:
        return 2  # bf16


def _model(*params: _Param) -> SimpleNamespace:
    return SimpleNamespace(parameters=lambda: iter(params))


def test_the_v2_runners_speculator_is_the_drafter() -> None:
    embed = _Param(1, 128256 * 4096)  # shared with the target (EAGLE reuses embedding / LM head)
    target = _model(embed, _Param(2, 10))
    head = _model(embed, _Param(3, 2 * 4096 * 4096), _Param(4, 4096))
    v2 = SimpleNamespace(model=target, speculator=SimpleNamespace(model=head))
    assert drafter_of(v2) is v2.speculator
    assert drafter_weights_bytes(v2) == 2 * (2 * 4096 * 4096 + 4096)
    v1 = SimpleNamespace(model=target, drafter=SimpleNamespace(model=head), speculator=None)
    assert drafter_weights_bytes(v1) == drafter_weights_bytes(v2)
    assert drafter_weights_bytes(SimpleNamespace(model=target, drafter=None)) is None
    assert drafter_weights_bytes(SimpleNamespace(model=target, speculator=SimpleNamespace())) == 0
    assert json.dumps(drafter_weights_bytes(v2))  # an int, stored in the drafter_loaded event
