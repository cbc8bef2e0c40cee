"""The one-pass LRU stack-distance model equals a direct LRU simulation of the same cache, at every size."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler.analysis.whatif import AccessTrace, RequestAccess, miss_ratio_curve

BS = 4


def _simulate(trace: AccessTrace, usable: int) -> int:
    """Hit tokens of a plain LRU cache of ``usable`` blocks fed the same way as the model."""
    cache: OrderedDict[object, None] = OrderedDict()
    hits, fresh = 0, 0
    for req in trace.requests:
        eligible = min(len(req.hashes), (req.prompt_tokens - 1) // trace.block_size)
        for h in req.hashes[:eligible].tolist():
            if h not in cache:
                break
            hits += trace.block_size
        pushes: list[object] = []
        for _ in range(req.tail_blocks):
            fresh += 1
            pushes.append(("tail", fresh))
        pushes += list(reversed(req.hashes.tolist()))
        for key in pushes:
            cache.pop(key, None)
            cache[key] = None
            while len(cache) > usable:
                cache.popitem(last=False)
    return hits


def _trace(shape: list[tuple[int, int, int, int]], partial_in_use: int = 0) -> AccessTrace:
    """Requests from (prefix id, prefix blocks, own blocks, tail blocks): chained hashes per prefix."""
    reqs = []
    for i, (prefix, n_prefix, n_own, tail) in enumerate(shape):
        hashes = [hash(("p", prefix, k)) for k in range(n_prefix)]
        hashes += [hash(("r", i, k)) for k in range(n_own)]
        prompt = len(hashes) * BS + 1
        reqs.append(RequestAccess(float(i), np.array(hashes, dtype=np.int64), prompt, tail))
    return AccessTrace(1, BS, reqs, partial_in_use)


requests_st = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 5), st.integers(0, 2), st.integers(0, 2)),
    min_size=1, max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(requests_st, st.integers(0, 3))
def test_curve_equals_direct_lru_simulation_at_every_size(
    shape: list[tuple[int, int, int, int]], partial_in_use: int
) -> None:
    trace = _trace(shape, partial_in_use)
    curve = miss_ratio_curve(trace)
    assert curve.reserved_blocks == 1 + trace.partial_blocks_in_use
    for usable in range(0, trace.accesses + 2):
        assert curve.hit_tokens(usable + curve.reserved_blocks) == _simulate(trace, usable), usable


@settings(max_examples=50, deadline=None)
@given(requests_st)
def test_curve_is_monotone_and_bounded_by_the_unbounded_cache(shape: list[tuple[int, int, int, int]]) -> None:
    curve = miss_ratio_curve(_trace(shape))
    values = [curve.hit_tokens(n) for n in range(1, 200)]
    assert values == sorted(values)
    assert values[-1] == curve.compulsory_hit_tokens
    need = curve.blocks_for(1.0)
    if need is None:  # no block ever recurs: nothing to reach
        assert curve.compulsory_hit_tokens == 0
    else:
        assert curve.hit_tokens(need) == curve.compulsory_hit_tokens
        assert need == 1 or curve.hit_tokens(need - 1) < curve.compulsory_hit_tokens


def test_last_prompt_token_is_never_a_hit() -> None:
    """A block-aligned prompt that recurs hits all but its last block (vLLM recomputes one token)."""
    hashes = np.array([11, 22, 33], dtype=np.int64)
    trace = AccessTrace(1, BS, [RequestAccess(0.0, hashes, 3 * BS, 0), RequestAccess(1.0, hashes, 3 * BS, 0)])
    curve = miss_ratio_curve(trace)
    assert curve.hit_tokens(100) == 2 * BS
    assert curve.max_hit_rate == (2 * BS) / (6 * BS)
