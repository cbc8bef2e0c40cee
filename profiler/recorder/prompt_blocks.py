"""Prompt-block hashes for what-if: the chained content hash of each new request's full prompt
blocks, stored against the engine that serves the request; and the same chain at
``CHUNK_TOKENS`` granularity (``prompt_chunks``), from which any block size that is a multiple of
it can be replayed (block ``j`` of size ``k × CHUNK_TOKENS`` is chunk ``(j + 1) k - 1``: a chained
hash names the whole prefix up to its end).

With one engine in the frontend, every request is that engine's (hashed when the frontend's
OutputProcessor adds it). With data parallelism the frontend's load balancer picks an engine per
request (``DPLBAsyncMPClient.get_core_engine_for_request``): the request is hashed there, for the
engine it was sent to.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Any

from profiler.recorder import context
from profiler.session.rows import PromptBlocksRow, PromptChunksRow

CHUNK_TOKENS = 16
"""Granularity of ``prompt_chunks``: the smallest block size the block-size what-if replays."""


@dataclass
class _Target:
    engine_id: int | None = None
    block_size: int | None = None
    """None turns hashing off (no prefix caching)."""


_targets: dict[int, _Target] = {}
"""Engine index (vLLM's data-parallel rank) -> where its requests' hashes go."""


def set_target(engine_id: int | None, block_size: int | None, engine_index: int = 0) -> None:
    """Hash requests for engine ``engine_index`` in blocks of ``block_size`` and store them for
    ``engine_id`` (``block_size`` None: no prefix caching, nothing to hash)."""
    _targets[engine_index] = _Target(engine_id, block_size)


def many_engines() -> bool:
    """True when this frontend serves several engines (data parallel): requests are hashed where
    the load balancer picks their engine."""
    return len(_targets) > 1


def prompt_block_hashes(token_ids: list[int], block_size: int) -> array:
    """Chained content hashes of the full blocks of ``token_ids`` (one int64 per block)."""
    out = array("q")
    h = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash((h, tuple(token_ids[start : start + block_size])))
        out.append(h)
    return out


def record_prompt_blocks(request: Any, engine_index: int | None = None) -> None:
    """Append a ``prompt_blocks`` row for ``request`` (a vLLM EngineCoreRequest).

    ``engine_index`` None: the frontend's only engine (nothing is written while it has several:
    the load balancer's hook records those, with the engine it chose).
    """
    if engine_index is None:
        if len(_targets) != 1:
            return
        target = next(iter(_targets.values()))
    else:
        target = _targets.get(engine_index)
        if target is None:
            return
    if target.block_size is None:
        return
    ids = getattr(request, "prompt_token_ids", None)
    w = context.writer()
    if not ids or w is None:
        return
    ids = list(ids)
    t = time.time()
    rid = getattr(request, "request_id", None)
    chunks = prompt_block_hashes(ids, CHUNK_TOKENS)
    bs = target.block_size
    # a chained hash names its whole prefix: block j of k chunks is chunk (j + 1) k - 1
    hashes = chunks[bs // CHUNK_TOKENS - 1::bs // CHUNK_TOKENS] if bs % CHUNK_TOKENS == 0 \
        else prompt_block_hashes(ids, bs)
    w.append("prompt_blocks", PromptBlocksRow(
        engine_id=target.engine_id, t_unix_s=t, request_id=rid, block_hashes=hashes.tobytes(),
    ))
    w.append("prompt_chunks", PromptChunksRow(
        engine_id=target.engine_id, t_unix_s=t, request_id=rid, chunk_tokens=CHUNK_TOKENS,
        chunk_hashes=chunks.tobytes(),
    ))
