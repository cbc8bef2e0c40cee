"""KV-cache groups of a session: each group's layers, block size, window and blocks it held.

Every group draws blocks from the engine's one pool of ``num_blocks`` (vLLM keeps one block for
itself: usage is over ``num_blocks - 1``, as vLLM's own ``kv_cache_usage``). ``kv_group_usage``
is sampled by the engine core for models with more than one group; a one-group model has none
and its usage is the engine's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from profiler.session.reader import Session

_GROUPS = """
SELECT g.engine_id, g.group_index, g.kind, g.layers, g.layer_names, g.block_size,
       g.sliding_window_tokens, g.page_size_bytes, g.num_blocks, g.is_draft,
       MAX(u.blocks_used), AVG(u.blocks_used), COUNT(u.blocks_used)
FROM kv_cache_groups g LEFT JOIN kv_group_usage u
  ON u.group_index = g.group_index AND u.engine_id IS g.engine_id
WHERE g.group_index IS NOT NULL
GROUP BY g.engine_id, g.group_index
ORDER BY g.engine_id, g.group_index
"""


@dataclass(frozen=True)
class KvGroup:
    """One KV-cache group of one engine, with the blocks it held (None: not sampled)."""

    engine_id: int | None
    index: int
    kind: str | None
    """``full_attention``, ``sliding_window``, ``mamba``, ``mla_attention``, ..."""
    layers: int | None
    layer_names: list[str]
    block_size: int | None
    sliding_window_tokens: int | None
    page_size_bytes: int | None
    num_blocks: int | None
    is_draft: bool
    """EAGLE/MTP draft layers (speculative decoding)."""
    peak_blocks_used: int | None
    mean_blocks_used: float | None

    @property
    def peak_usage_frac(self) -> float | None:
        """Peak blocks held over the usable pool (vLLM's usage denominator)."""
        if self.peak_blocks_used is None or not self.num_blocks or self.num_blocks < 2:
            return None
        return self.peak_blocks_used / (self.num_blocks - 1)

    def blocks_per_request(self, tokens: float) -> int:
        """Blocks this group holds for one request of ``tokens`` tokens (prompt + generated).

        Full attention keeps every block; a sliding window keeps the blocks its window reaches
        (``ceil((window - 1) / block_size) + 1``); Mamba keeps one state block.
        """
        bs = self.block_size or 1
        full = max(math.ceil(tokens / bs), 0)
        if self.kind == "mamba":
            return 1
        if self.sliding_window_tokens:
            return min(full, math.ceil((self.sliding_window_tokens - 1) / bs) + 1)
        return full

    def as_dict(self) -> dict[str, Any]:
        """The report's ``kv_cache.groups[]`` object."""
        d = asdict(self)
        d.pop("layer_names")
        d["peak_usage_frac"] = self.peak_usage_frac
        return d


def _names(raw: Any) -> list[str]:
    try:
        names = json.loads(raw)
    except (TypeError, ValueError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def kv_groups(session: Session, engine_id: int | None = None) -> list[KvGroup]:
    """The session's KV-cache groups (of ``engine_id`` only when given), in group order."""
    out = []
    for (eid, idx, kind, layers, names, bs, window, page, blocks, draft, peak, mean,
         n) in session.rows(_GROUPS):
        if engine_id is not None and eid is not None and eid != engine_id:
            continue
        out.append(KvGroup(
            engine_id=eid, index=int(idx), kind=kind, layers=layers, layer_names=_names(names),
            block_size=bs, sliding_window_tokens=window, page_size_bytes=page, num_blocks=blocks,
            is_draft=bool(draft), peak_blocks_used=int(peak) if n else None,
            mean_blocks_used=float(mean) if n else None,
        ))
    # a session with two engines recorded the same groups twice only if both started: keep each
    return out


def group_usage(session: Session, start_unix_s: float = 0.0) -> pd.DataFrame:
    """Sampled blocks per group: ``t_s`` (from ``start_unix_s``), ``engine_id``, ``group_index``,
    ``blocks_used``, ``kv_usage_frac`` (the pool's usage at the same moment)."""
    df = session.table("kv_group_usage", "WHERE t_unix_s IS NOT NULL AND group_index IS NOT NULL "
                                         "ORDER BY t_unix_s")
    df["t_s"] = df["t_unix_s"] - start_unix_s
    return df
