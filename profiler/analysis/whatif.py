"""What-if: the prefix-cache hit rate at other KV cache sizes (LRU stack distances, one pass).

The access sequence is the session's ``prompt_blocks``: for each request, in arrival order, the
chained content hashes of its full prompt blocks. The model replays it through an LRU stack that
mimics vLLM's prefix cache:

* a request looks up its prompt blocks against the cache as it was before the request; block ``i``
  hits only if blocks ``0..i`` all hit (a chained prefix), and at most ``(prompt_tokens - 1) //
  block_size`` blocks can hit (vLLM recomputes the last prompt token);
* the request then adds its prompt blocks plus its "tail": the blocks that its generated tokens
  filled, which vLLM caches too but no other request reuses; vLLM frees a request's blocks tail
  first, so the stack gets the tail, then the prompt blocks last to first (block 0 most recent);
* a request's last, partly filled block is never cached (vLLM puts it at the front of the free
  queue, so it evicts nothing once freed), but while the request runs it takes a block: the cache
  keeps ``N - 1 - R`` blocks, with vLLM's null block and ``R`` = partial blocks in use (the
  session's mean number of running requests).

A block whose stack distance (distinct blocks touched since its last use) is ``d`` stays cached in
any LRU cache larger than ``d``, so one pass gives the hit count at every size at once.

Sessions without prompt-block hashes (``kvscope attach``) fall back to an estimate from KV events
(``event_curve``): re-stores of evicted blocks, for sizes from the session's up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.errors import NotAnalysable
from profiler.session.reader import Session

NULL_BLOCKS = 1
"""Blocks of the pool that never hold KV (vLLM's null block)."""

MAX_ACCESSES = 200_000_000
"""More block accesses than this means damaged token counts (the replay would need GiBs)."""

_NO_ACCESS_DATA = "session has no prompt-block hashes and no KV events: what-if needs one of them"

REQUEST_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_REQUEST_SUFFIX = REQUEST_SUFFIX
"""vLLM (0.2x+) appends ``-<8 hex>`` to the user's request id internally."""


@dataclass(frozen=True)
class RequestAccess:
    """One request of the access sequence."""

    t_unix_s: float
    """When the request was added."""
    hashes: np.ndarray
    """int64 chained hashes of the full prompt blocks, in prompt order."""
    prompt_tokens: int
    tail_blocks: int
    """Full blocks of generated tokens (cached by vLLM, reused by nobody)."""
    request_id: str = ""
    """The request's id as its prompt-block row recorded it ("" when unknown)."""


@dataclass(frozen=True)
class AccessTrace:
    """The block-hash access sequence of one engine."""

    engine_id: int
    block_size: int
    requests: list[RequestAccess]
    partial_blocks_in_use: int = 0
    """Partly filled blocks held by running requests (not available to the cache)."""

    @property
    def query_tokens(self) -> int:
        """Prompt tokens looked up in the prefix cache (the hit rate's denominator)."""
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def accesses(self) -> int:
        """Block pushes the replay makes (prompt + tail blocks)."""
        return sum(len(r.hashes) + r.tail_blocks for r in self.requests)


@dataclass(frozen=True)
class MissRatioCurve:
    """Predicted prefix-cache hits for every cache size, from one replay."""

    block_size: int
    query_tokens: int
    reserved_blocks: int
    """Blocks of the pool that never hold cached prefixes (null block + partial blocks in use)."""
    cum_hit_tokens: np.ndarray
    """``cum_hit_tokens[c]``: hit tokens with ``c`` usable blocks; constant after the last entry."""
    compulsory_hit_tokens: int
    """Hit tokens with an infinite cache (every recurrence of a block hits)."""
    request_max_distance: np.ndarray
    """Per request: largest stack distance among its reusable blocks (-1: nothing to reuse)."""
    min_blocks: int = 1
    """Smallest size the curve predicts (KV-event curves only see misses: the session's size)."""
    source: str = "prompt_blocks"
    """``prompt_blocks`` (exact replay) or ``kv_events`` (re-stores only: an estimate)."""

    def evicted_requests(self, num_blocks: int) -> np.ndarray:
        """Mask of requests that lose some reusable block to eviction at ``num_blocks``."""
        return self.request_max_distance >= self.usable(num_blocks)

    def usable(self, num_blocks: int) -> int:
        """Blocks of a ``num_blocks`` pool that can hold cached prefixes."""
        return max(num_blocks - self.reserved_blocks, 0)

    def hit_tokens(self, num_blocks: int) -> int:
        """Predicted hit tokens for a pool of ``num_blocks`` blocks (as ``num_gpu_blocks``)."""
        usable = self.usable(num_blocks)
        return int(self.cum_hit_tokens[min(usable, len(self.cum_hit_tokens) - 1)])

    def hit_rate(self, num_blocks: int) -> float | None:
        """Predicted prefix hit rate (hit tokens / queried tokens) at ``num_blocks``."""
        if self.query_tokens <= 0 or num_blocks < self.min_blocks:
            return None
        return self.hit_tokens(num_blocks) / self.query_tokens

    @property
    def max_hit_rate(self) -> float | None:
        """Hit rate with an unbounded cache."""
        return self.compulsory_hit_tokens / self.query_tokens if self.query_tokens > 0 else None

    def blocks_for(self, frac_of_max: float) -> int | None:
        """Smallest ``num_gpu_blocks`` reaching ``frac_of_max`` of the unbounded-cache hits."""
        if self.compulsory_hit_tokens <= 0:
            return None
        target = frac_of_max * self.compulsory_hit_tokens
        usable = int(np.searchsorted(self.cum_hit_tokens, target - 1e-9, side="left"))
        return max(usable + self.reserved_blocks, self.min_blocks)

    def points(self, max_blocks: int | None = None, count: int = 200) -> list[tuple[int, float]]:
        """(num_gpu_blocks, hit rate) samples from 1 block to ``max_blocks`` (default: knee × 1.5)."""
        if self.query_tokens <= 0:
            return []
        top = max_blocks or max(int((self.blocks_for(1.0) or 2) * 1.5), 4)
        lo = min(self.min_blocks, top)
        sizes = np.unique(np.linspace(lo, top, num=min(count, top - lo + 1)).round().astype(int))
        return [(int(n), self.hit_tokens(int(n)) / self.query_tokens) for n in sizes]


def miss_ratio_curve(trace: AccessTrace) -> MissRatioCurve:
    """Replay ``trace`` once and return predicted hits at every cache size.

    A Fenwick tree over prompt-block push times holds a 1 at each block's latest push, so the
    distinct prompt blocks pushed after time ``t0`` are a suffix sum; tail blocks never recur, so
    a running count of them is enough.
    """
    bs = trace.block_size
    if trace.accesses > MAX_ACCESSES:
        raise NotAnalysable(f"{trace.accesses:,} block accesses (prompt + generated blocks): more "
                            "than the session's requests can have made; its token counts are damaged")
    n_pushes = sum(len(r.hashes) for r in trace.requests)
    tree = [0] * (n_pushes + 1)
    last: dict[int, tuple[int, int]] = {}  # hash -> (push time, tail pushes before it)
    live = 0  # distinct prompt blocks seen = ones in the tree
    tails = 0
    now = 0
    hist = np.zeros(trace.accesses + 2, dtype=np.int64)
    compulsory = 0
    req_max = np.full(len(trace.requests), -1, dtype=np.int64)
    for k, req in enumerate(trace.requests):
        hashes = req.hashes.tolist()
        eligible = min(len(hashes), max(req.prompt_tokens - 1, 0) // bs)
        prefix_max = -1
        for h in hashes[:eligible]:
            seen = last.get(h)
            if seen is None:
                break  # a chained prefix stops at its first never-seen block
            t0, tails0 = seen
            i, before = t0 + 1, 0
            while i > 0:
                before += tree[i]
                i -= i & -i
            distance = (live - before) + (tails - tails0)  # distinct blocks touched after t0
            if distance > prefix_max:
                prefix_max = distance
            hist[prefix_max] += bs
            compulsory += bs
        req_max[k] = prefix_max
        tails += req.tail_blocks
        for h in reversed(hashes):
            seen = last.get(h)
            if seen is None:
                live += 1
            else:
                i = seen[0] + 1
                while i <= n_pushes:
                    tree[i] -= 1
                    i += i & -i
            i = now + 1
            while i <= n_pushes:
                tree[i] += 1
                i += i & -i
            last[h] = (now, tails)
            now += 1
    # a block at distance d is in any cache of more than d usable blocks
    cum = np.concatenate([[0], np.cumsum(hist)])
    return MissRatioCurve(bs, trace.query_tokens, NULL_BLOCKS + trace.partial_blocks_in_use, cum,
                          compulsory, req_max)


def load_trace(session: Session, engine_id: int | None = None) -> AccessTrace:
    """The access sequence of ``engine_id`` (default: the engine with the most prompt blocks)."""
    blocks = session.table("prompt_blocks")
    if blocks.empty:
        raise NotAnalysable(
            "session has no prompt-block hashes (recorded with prefix caching off, or by attach "
            "without KV events): what-if needs them"
        )
    if engine_id is None:
        engine_id = int(blocks["engine_id"].value_counts().idxmax())
    blocks = blocks[blocks["engine_id"] == engine_id]
    if blocks.empty:
        raise NotAnalysable(f"engine {engine_id} has no prompt-block hashes in this session")
    engines = session.table("engines")
    row = engines[engines["engine_id"] == engine_id]
    if row.empty or row.iloc[0]["block_size"] is None or np.isnan(row.iloc[0]["block_size"]):
        raise NotAnalysable(f"engine {engine_id}: block size unknown")
    bs = int(row.iloc[0]["block_size"])
    hashes = [np.frombuffer(raw or b"", dtype="<i8") for raw in blocks["block_hashes"]]
    return _trace(session, engine_id, bs, blocks, hashes)


def _trace(session: Session, engine_id: int, bs: int, blocks: pd.DataFrame,
           hashes: list[np.ndarray]) -> AccessTrace:
    """The access trace of ``blocks`` rows (one per request) whose block hashes are ``hashes``."""
    reqs = session.table("requests", "WHERE engine_id = ?", (engine_id,))
    reqs = reqs.drop_duplicates("request_id")
    reqs.index = reqs["request_id"].astype(str)
    blocks = blocks.assign(_hashes=hashes).reset_index().sort_values(["t_unix_s", "index"],
                                                                     kind="stable")
    rid = blocks["request_id"].astype(str)
    base_id = rid.str.replace(_REQUEST_SUFFIX, "", regex=True)
    n_full = blocks["_hashes"].map(len).to_numpy()

    def per_request(col: str) -> np.ndarray:
        known = pd.to_numeric(reqs[col], errors="coerce")  # float, so the fill matches (pandas 4)
        return rid.map(known).fillna(base_id.map(known)).to_numpy(dtype=float)

    prompt = per_request("prompt_tokens")
    gen = per_request("generation_tokens")
    # unfinished or unmatched requests: one more partial block, no generated blocks
    unknown = np.isnan(prompt)
    prompt = np.where(unknown, n_full * bs + 1, prompt).astype(np.int64)
    gen = np.where(np.isnan(gen) | unknown, 0, gen).astype(np.int64)
    tail = np.maximum(np.maximum(prompt + gen - 1, 0) // bs - n_full, 0)  # last token never stored
    out = [RequestAccess(float(t), h, int(p), int(k), r)
           for t, h, p, k, r in zip(blocks["t_unix_s"], blocks["_hashes"], prompt, tail, rid,
                                    strict=True)]
    running = session.scalar("SELECT AVG(running) FROM steps WHERE engine_id = ? AND running > 0",
                             (engine_id,))
    return AccessTrace(engine_id, bs, out, int(round(running)) if running else 0)


def chunk_trace(session: Session, block_size: int, engine_id: int | None = None) -> AccessTrace:
    """The access sequence at another block size, from the ``prompt_chunks`` hashes.

    ``block_size`` must be a multiple of the recorded chunk size: block ``j`` is named by chunk
    ``(j + 1) k - 1`` (a chained hash names the whole prefix up to its end).
    """
    chunks = session.table("prompt_chunks")
    if chunks.empty:
        raise NotAnalysable("session has no prompt-chunk hashes (recorded before kvscope stored "
                            "them, or by attach): the block-size what-if needs them")
    if engine_id is None:
        engine_id = int(chunks["engine_id"].value_counts().idxmax())
    chunks = chunks[chunks["engine_id"] == engine_id].dropna(subset=["chunk_tokens"])
    sizes = chunks["chunk_tokens"].astype(int).unique()
    if chunks.empty or len(sizes) != 1:
        raise NotAnalysable(f"engine {engine_id}: no prompt chunks of one size")
    chunk = int(sizes[0])
    if block_size <= 0 or block_size % chunk:
        raise NotAnalysable(f"block size {block_size} is not a multiple of the recorded "
                            f"{chunk}-token chunks")
    k = block_size // chunk
    hashes = [np.frombuffer(raw or b"", dtype="<i8")[k - 1::k] for raw in chunks["chunk_hashes"]]
    return _trace(session, engine_id, block_size, chunks, hashes)


BLOCK_SIZES = (16, 32, 64, 128, 256)
"""Block sizes the block-size what-if tries by default (and the engine's own)."""


@dataclass(frozen=True)
class BlockSizePoint:
    """The prefix cache at another block size, with the same KV memory (token slots)."""

    block_size: int
    num_blocks: int
    """Blocks of that size in the session's KV memory (``num_gpu_blocks`` at that size)."""
    hit_rate: float | None
    """Predicted hit rate at that size and memory."""
    max_hit_rate: float | None
    """With an unbounded cache of that block size."""
    measured_hit_rate: float | None
    """The session's measured hit rate (its own block size only)."""


def block_size_curve(session: Session, sizes: tuple[int, ...] | list[int] = BLOCK_SIZES,
                     engine_id: int | None = None) -> list[BlockSizePoint]:
    """Predicted prefix hit rate at each block size, at the session's KV memory (one replay each)."""
    chunks_engine = engine_id
    if chunks_engine is None:
        chunks_engine = session.scalar("SELECT engine_id FROM prompt_chunks GROUP BY engine_id "
                                       "ORDER BY COUNT(*) DESC LIMIT 1")
    if chunks_engine is None:
        raise NotAnalysable("session has no prompt-chunk hashes (recorded before kvscope stored "
                            "them, or by attach): the block-size what-if needs them")
    point = session_point(session, int(chunks_engine))
    bs = session.scalar("SELECT block_size FROM engines WHERE engine_id = ?", (int(chunks_engine),))
    if not bs or not point.num_blocks:
        raise NotAnalysable(f"engine {chunks_engine}: block size or cache size unknown")
    slots = (point.num_blocks - NULL_BLOCKS) * int(bs)
    out = []
    for size in sorted({*sizes, int(bs)}):
        try:
            trace = chunk_trace(session, int(size), int(chunks_engine))
        except NotAnalysable:
            continue
        curve = miss_ratio_curve(trace)
        n = slots // int(size) + NULL_BLOCKS
        out.append(BlockSizePoint(int(size), int(n), curve.hit_rate(n), curve.max_hit_rate,
                                  point.hit_rate if int(size) == int(bs) else None))
    return out


def event_curve(session: Session, engine_id: int | None = None) -> tuple[int, MissRatioCurve]:
    """An estimated curve from KV events alone (attach sessions without prompt-block hashes).

    Events show misses only: every BlockStored of a hash that a BlockRemoved evicted earlier is a
    block the cache recomputed. Its LRU distance is at least the distinct blocks stored since its
    previous store and at least the session's usable size (it was evicted there); a larger cache
    turns it into a hit once its size exceeds that distance. Sizes below the session's are not
    predicted (the hits there are invisible), and chains are not enforced: an upper estimate.
    """
    if not session.has_table("kv_events"):
        raise NotAnalysable(_NO_ACCESS_DATA)
    ev = session.table("kv_events", "WHERE medium IS NULL OR medium = 'GPU' "
                                    "ORDER BY engine_id, t_unix_s, seq, rowid")
    if ev.empty:
        raise NotAnalysable(_NO_ACCESS_DATA)
    if engine_id is None:
        engine_id = int(ev["engine_id"].value_counts().idxmax())
    ev = ev[ev["engine_id"] == engine_id]
    point = session_point(session, engine_id)
    bs = session.scalar("SELECT block_size FROM engines WHERE engine_id = ?", (engine_id,))
    q, h = session.rows(
        "SELECT SUM(prefix_queries_tokens), SUM(prefix_hits_tokens) FROM steps WHERE engine_id = ?",
        (engine_id,))[0]
    if not bs or not point.num_blocks or not q:
        raise NotAnalysable(f"engine {engine_id}: KV events without block size, cache size or prefix "
                         "counts: what-if needs them")
    usable_now = max(point.num_blocks - NULL_BLOCKS, 0)
    stores: list[tuple[int, bool, bool]] = []  # (hash, re-store of an evicted hash, after a clear)
    evicted: set[int] = set()
    cleared = False
    for kind, hv in zip(ev["kind"], ev["block_hash"], strict=True):
        if kind == "stored":
            stores.append((int(hv), int(hv) in evicted, cleared))
            evicted.discard(int(hv))
            cleared = False
        elif kind == "removed":
            evicted.add(int(hv))
        elif kind == "cleared":
            evicted.clear()
            cleared = True
    n = len(stores)
    tree = [0] * (n + 1)
    last: dict[int, int] = {}
    live = 0
    distances = []
    for now, (hv, restore, after_clear) in enumerate(stores):
        if after_clear:
            last.clear()  # nothing stored before a clear is reused after it
        t0 = last.get(hv)
        if t0 is not None:
            i, before = t0 + 1, 0
            while i > 0:
                before += tree[i]
                i -= i & -i
            if restore:
                distances.append(max(live - before, usable_now))
            i = t0 + 1
            while i <= n:
                tree[i] -= 1
                i += i & -i
        else:
            if restore:  # stored before the stream began: every block seen since is more recent
                distances.append(max(live, usable_now))
            live += 1
        i = now + 1
        while i <= n:
            tree[i] += 1
            i += i & -i
        last[hv] = now
    hist = np.bincount(np.asarray(distances, dtype=np.int64), minlength=usable_now + 1) * int(bs)
    cum = int(h or 0) + np.concatenate([[0], np.cumsum(hist)])
    curve = MissRatioCurve(int(bs), int(q), NULL_BLOCKS, cum, int(cum[-1]),
                           np.zeros(0, dtype=np.int64), min_blocks=point.num_blocks,
                           source="kv_events")
    return engine_id, curve


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


@dataclass(frozen=True)
class SessionPoint:
    """The session's real cache size and measured prefix hit rate."""

    num_blocks: int | None
    hit_rate: float | None
    """Measured: vLLM's prefix hits / queries (preempted re-lookups excluded)."""


def session_point(session: Session, engine_id: int) -> SessionPoint:
    """Real ``num_gpu_blocks`` and measured hit rate of ``engine_id``."""
    blocks = session.scalar("SELECT num_gpu_blocks FROM engines WHERE engine_id = ?", (engine_id,))
    q, h = session.rows(
        "SELECT SUM(prefix_queries_tokens), SUM(prefix_hits_tokens) FROM steps WHERE engine_id = ?",
        (engine_id,),
    )[0]
    rate = (h / q) if q and h is not None else None
    return SessionPoint(int(blocks) if blocks is not None else None,
                        rate if rate is not None and rate <= 1 else None)


@dataclass(frozen=True)
class WhatIf:
    """A session's curve and its real operating point."""

    engine_id: int
    trace: AccessTrace | None
    """The replayed prompt-block sequence (None for a curve estimated from KV events, or one read
    back from the session's stored summaries: ``stored_counts`` then says what it held)."""
    curve: MissRatioCurve
    actual: SessionPoint
    stored_counts: tuple[int, int] | None = None
    """(requests, block accesses) of the replay a stored curve came from."""

    @property
    def request_count(self) -> int | None:
        """Requests replayed (None for a KV-event estimate)."""
        if self.trace is not None:
            return len(self.trace.requests)
        return self.stored_counts[0] if self.stored_counts else None

    @property
    def access_count(self) -> int | None:
        """Block accesses replayed (None for a KV-event estimate)."""
        if self.trace is not None:
            return self.trace.accesses
        return self.stored_counts[1] if self.stored_counts else None


def analyse(session: Session, engine_id: int | None = None) -> WhatIf:
    """The miss-ratio curve of ``session``: from prompt-block hashes, else from KV events."""
    if session.scalar("SELECT COUNT(*) FROM prompt_blocks"):
        trace = load_trace(session, engine_id)
        return WhatIf(trace.engine_id, trace, miss_ratio_curve(trace),
                      session_point(session, trace.engine_id))
    eid, curve = event_curve(session, engine_id)
    return WhatIf(eid, None, curve, session_point(session, eid))


def predictions(w: WhatIf, sizes: list[int]) -> dict[str, Any]:
    """The ``kvscope whatif --json`` object."""
    c, a = w.curve, w.actual
    return {
        "engine_id": w.engine_id,
        "source": c.source,
        "block_size": c.block_size,
        "requests": w.request_count,
        "query_tokens": c.query_tokens,
        "actual": {"num_blocks": a.num_blocks, "hit_rate": a.hit_rate,
                   "predicted_hit_rate": c.hit_rate(a.num_blocks) if a.num_blocks else None},
        "max_hit_rate": c.max_hit_rate,
        "blocks_for_90pct_of_max": c.blocks_for(0.9),
        "predictions": [{"num_blocks": n, "tokens": n * c.block_size, "hit_rate": c.hit_rate(n)}
                        for n in sizes],
    }
