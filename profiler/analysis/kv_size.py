"""How big the KV cache was: what it held (blocks × bytes per block) apart from what start-up measured.

The two differ under ``num_gpu_blocks_override``: start-up may measure room for 103 GiB of KV while
the engine runs 600 blocks of 2 MiB (1.17 GiB). Every page, the text report and the JSON show the
held size from here; the start-up figure is shown only as "room start-up measured", and a negative
one (a start-up OOM: the rest of start-up left nothing) as a shortfall, never as a size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from profiler.session.reader import Session
from profiler.units import finite_or_none


@dataclass(frozen=True)
class KvCacheSize:
    """One engine's KV cache: blocks, their size, and start-up's measurement (per worker)."""

    num_blocks: int | None
    block_size_tokens: int | None
    bytes_per_block: float | None
    """Bytes of one block on one worker (the recorder's ``kv_cache_config`` event); None when the
    session does not say (start-up bytes / blocks is wrong under ``num_gpu_blocks_override``)."""
    workers: int
    """Workers that each hold a shard of every block (tensor × pipeline parallel)."""
    startup_kv_bytes: float | None
    """What start-up measured for the KV cache on one worker (negative: that much short)."""

    @property
    def tokens(self) -> int | None:
        """Tokens the cache holds (blocks × block size)."""
        if self.num_blocks is None or self.block_size_tokens is None:
            return None
        return self.num_blocks * self.block_size_tokens

    @property
    def size_bytes(self) -> float | None:
        """What the cache held on one worker: blocks × bytes per block."""
        if self.num_blocks is None or self.bytes_per_block is None:
            return None
        return self.num_blocks * self.bytes_per_block

    @property
    def startup_room_blocks(self) -> int | None:
        """Blocks that start-up's measured KV memory had room for (None when unknown or negative)."""
        if not self.bytes_per_block or self.startup_kv_bytes is None or self.startup_kv_bytes < 0:
            return None
        return int(self.startup_kv_bytes // self.bytes_per_block)

    @property
    def startup_short_bytes(self) -> float | None:
        """How much start-up was short of any KV memory (a negative measurement), else None."""
        if self.startup_kv_bytes is None or self.startup_kv_bytes >= 0:
            return None
        return -self.startup_kv_bytes

    @property
    def capped(self) -> bool:
        """True when the cache held fewer blocks than start-up measured room for (an override)."""
        room = self.startup_room_blocks
        return room is not None and self.num_blocks is not None and room > self.num_blocks * 1.02


def _int(v: Any) -> int | None:
    v = finite_or_none(v)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def bytes_per_block(session: Session, engine_id: int | None = None) -> float | None:
    """Bytes per KV block per worker from the recorder's ``kv_cache_config`` event (None: not recorded)."""
    where = "WHERE kind = 'kv_cache_config'"
    params: tuple[Any, ...] = ()
    if engine_id is not None:
        where += " AND (engine_id IS NULL OR engine_id = ?)"
        params = (engine_id,)
    df = session.table("events", where + " ORDER BY t_unix_s", params)
    for raw in df["details_json"].dropna():
        try:
            per_block = json.loads(raw).get("bytes_per_block")
        except (ValueError, AttributeError, RecursionError):
            continue
        per_block = finite_or_none(per_block)
        if isinstance(per_block, int | float) and not isinstance(per_block, bool) and per_block > 0:
            return float(per_block)
    return None


def kv_cache_size(session: Session, engine_id: int | None = None) -> KvCacheSize:
    """The KV cache of ``engine_id`` (the first engine when None); every field None when unknown."""
    engines = session.table("engines")
    if engine_id is not None:
        engines = engines[engines["engine_id"] == engine_id]
    eng = engines.iloc[0].to_dict() if not engines.empty else {}
    startup = session.table("startup_memory")
    kv = None
    if not startup.empty:
        row = startup.sort_values(["rank", "t_unix_s"], na_position="last").iloc[0]
        kv = finite_or_none(row["kv_cache_bytes"])
    tp = _int(eng.get("tensor_parallel_size")) or 1
    pp = _int(eng.get("pipeline_parallel_size")) or 1
    eid = _int(eng.get("engine_id"))
    return KvCacheSize(_int(eng.get("num_gpu_blocks")), _int(eng.get("block_size")),
                       bytes_per_block(session, eid) if eid is not None else bytes_per_block(session),
                       max(tp * pp, 1), float(kv) if kv is not None else None)


def blocks_at_utilization(util: float, startup: dict[str, Any], per_block: float | None) -> int | None:
    """KV blocks one worker gets at ``gpu_memory_utilization`` ``util``, from its start-up profile:
    (util × device total − weights − activation peak − non-torch − CUDA graphs) / bytes per block.
    None when the profile or the block size is unknown (CPU backend, attach)."""
    total = finite_or_none(startup.get("total_bytes"))
    if not per_block or not total or startup.get("device") != "cuda":
        return None
    used = 0.0
    for k in ("weights_bytes", "activation_peak_bytes", "non_torch_bytes", "cuda_graph_bytes"):
        v = finite_or_none(startup.get(k))
        used += float(v) if isinstance(v, int | float) else 0.0
    room = util * float(total) - used
    return max(int(math.floor(room / per_block)), 0)
