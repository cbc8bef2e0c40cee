"""KV demand per KV-cache group, for engines whose cache has more than one group.

All groups draw on one pool of blocks, so the pool must hold the sum of what each group needs.
Per request, a full-attention group holds every block of the request's tokens (less the shared
prefix blocks, held once for everyone), a sliding-window group only the blocks its window reaches
(prefix blocks left the window, so nothing shared), a Mamba group one state block
(``KvGroup.blocks_per_request``). Each group's per-request need is the p90 over the finished
requests, like the one-group demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.analysis.kv_groups import KvGroup, kv_groups
from profiler.session.reader import Session


@dataclass(frozen=True)
class GroupDemand:
    """One group's share of the peak demand."""

    index: int
    kind: str | None
    blocks_per_seq: int
    """Blocks one request holds in this group beyond shared prefix blocks (p90)."""
    total_blocks_per_seq: int
    """Blocks one request holds in this group counting its prefix (p90)."""
    shared_blocks: int
    seqs: int

    @property
    def blocks(self) -> int:
        """This group's peak demand in blocks."""
        return self.shared_blocks + self.seqs * self.blocks_per_seq

    def describe(self) -> str:
        """``group 1 sliding_window: 16 × 3 + 0 = 48 blocks``."""
        return (f"group {self.index} {self.kind}: {self.seqs} × {self.blocks_per_seq} + "
                f"{self.shared_blocks} shared = {self.blocks} blocks")


def engine_groups(session: Session, engine_id: int) -> list[KvGroup]:
    """The KV-cache groups of one engine (rows without an engine id count for every engine)."""
    return [g for g in kv_groups(session) if g.engine_id in (engine_id, None)]


def group_demands(groups: list[KvGroup], requests: pd.DataFrame, seqs: int,
                  shared_blocks: int) -> list[GroupDemand]:
    """Per-group demand of ``seqs`` concurrent requests shaped like ``requests``."""
    tokens = (requests["prompt_tokens"].fillna(0) + requests["generation_tokens"].fillna(0) - 1
              ).clip(lower=0).to_numpy(dtype=float)
    cached = requests["cached_tokens"].fillna(0).to_numpy(dtype=float)
    out = []
    for g in groups:
        held = np.array([g.blocks_per_request(t) for t in tokens], dtype=float)
        windowed = g.kind == "mamba" or bool(g.sliding_window_tokens)
        if windowed:
            own, shared = held, 0
        else:
            own, shared = held - np.minimum(cached // (g.block_size or 1), held), shared_blocks
        out.append(GroupDemand(
            index=g.index, kind=g.kind,
            blocks_per_seq=max(int(np.ceil(np.percentile(own, 90))), 1),
            total_blocks_per_seq=max(int(np.ceil(np.percentile(held, 90))), 1),
            shared_blocks=int(shared), seqs=seqs))
    return out
