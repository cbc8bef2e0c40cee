"""Token occupancy: KV tokens actually held vs the cache's token slots, per step.

vLLM's ``kv_cache_usage`` counts blocks with a reference; a block of ``block_size`` slots is in use
as soon as one token lands in it. The engine core records per step the blocks in use and the tokens
held in them (``kv_occupancy``); occupancy is tokens held over every token slot of the cache
(``(num_gpu_blocks - 1) × block_size``: vLLM's null block never holds KV, as in its usage), so it
reads on the same scale as block usage: usage 67 % with occupancy 37 % means 30 % of the cache is
the unfilled tails of blocks in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.session.reader import Session


@dataclass(frozen=True)
class Occupancy:
    """Per-step occupancy of one engine and its mean/peak."""

    engine_id: int
    steps: pd.DataFrame
    """``t_unix_s``, ``used_blocks``, ``held_tokens``, ``token_occupancy_frac``,
    ``block_usage_frac`` (blocks in use over usable blocks), ``fill_frac`` (tokens held over the
    slots of the blocks in use)."""
    mean_frac: float | None
    peak_frac: float | None


def engine_occupancy(session: Session, engine_id: int | None = None) -> Occupancy | None:
    """Occupancy of ``engine_id`` (default: the engine with the most occupancy rows)."""
    occ = session.table("kv_occupancy", "WHERE engine_id IS NOT NULL ORDER BY t_unix_s")
    if occ.empty:
        return None
    if engine_id is None:
        engine_id = int(occ["engine_id"].value_counts().idxmax())
    occ = occ[occ["engine_id"] == engine_id].dropna(subset=["used_blocks", "held_tokens"])
    row = session.rows("SELECT block_size, num_gpu_blocks FROM engines WHERE engine_id = ?",
                       (engine_id,))
    if occ.empty or not row or not row[0][0] or not row[0][1] or row[0][1] < 2:
        return None
    bs, blocks = float(row[0][0]), float(row[0][1])
    slots = (blocks - 1) * bs
    used = occ["used_blocks"].to_numpy(dtype=float)
    held = np.minimum(occ["held_tokens"].to_numpy(dtype=float), used * bs)
    frac = held / slots
    with np.errstate(divide="ignore", invalid="ignore"):
        fill = np.where(used > 0, held / (used * bs), np.nan)
    df = pd.DataFrame({"t_unix_s": occ["t_unix_s"].to_numpy(dtype=float), "used_blocks": used,
                       "held_tokens": held, "token_occupancy_frac": frac,
                       "block_usage_frac": used / (blocks - 1), "fill_frac": fill})
    return Occupancy(engine_id, df, float(frac.mean()), float(frac.max()))
