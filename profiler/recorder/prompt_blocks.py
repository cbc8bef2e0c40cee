"""Prompt-block hashes for what-if: the chained content hash of each new request's full prompt
blocks, stored against the engine the frontend's stat logger created last; and the same chain at
``CHUNK_TOKENS`` granularity (``prompt_chunks``), from which any block size that is a multiple of
it can be replayed (block ``j`` of size ``k × CHUNK_TOKENS`` is chunk ``(j + 1) k - 1``: a chained
hash names the whole prefix up to its end)."""

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
    """None turns hashing off (no prefix caching, or no engine yet)."""


_target = _Target()


def set_target(engine_id: int | None, block_size: int | None) -> None:
    """Hash new requests' prompts in blocks of ``block_size`` and store them for ``engine_id``."""
    _target.engine_id = engine_id
    _target.block_size = block_size


def prompt_block_hashes(token_ids: list[int], block_size: int) -> array:
    """Chained content hashes of the full blocks of ``token_ids`` (one int64 per block)."""
    out = array("q")
    h = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash((h, tuple(token_ids[start : start + block_size])))
        out.append(h)
    return out


def record_prompt_blocks(request: Any) -> None:
    """Append a ``prompt_blocks`` row for ``request`` (a vLLM EngineCoreRequest)."""
    if _target.block_size is None:
        return
    ids = getattr(request, "prompt_token_ids", None)
    w = context.writer()
    if not ids or w is None:
        return
    ids = list(ids)
    t = time.time()
    rid = getattr(request, "request_id", None)
    chunks = prompt_block_hashes(ids, CHUNK_TOKENS)
    bs = _target.block_size
    # a chained hash names its whole prefix: block j of k chunks is chunk (j + 1) k - 1
    hashes = chunks[bs // CHUNK_TOKENS - 1::bs // CHUNK_TOKENS] if bs % CHUNK_TOKENS == 0 \
        else prompt_block_hashes(ids, bs)
    w.append("prompt_blocks", PromptBlocksRow(
        engine_id=_target.engine_id, t_unix_s=t, request_id=rid, block_hashes=hashes.tobytes(),
    ))
    w.append("prompt_chunks", PromptChunksRow(
        engine_id=_target.engine_id, t_unix_s=t, request_id=rid, chunk_tokens=CHUNK_TOKENS,
        chunk_hashes=chunks.tobytes(),
    ))
