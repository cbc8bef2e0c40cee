"""Checks of a recorded session against the independent stat logger of ``workload.py --counts``,
shared by the CPU engine tests and the GPU scenario script (``bench/gpu_configs.py``).

Each returns ``True`` or a short text saying what differed (so a script can tabulate it and a test
can ``assert x is True, x``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

Check = bool | str


def spec_decode_matches(rep: dict[str, Any], counts: dict[str, Any]) -> dict[str, Check]:
    """The report's ``spec_decode`` sums equal what vLLM's own SpecDecodingStats added up to."""
    sd = rep.get("spec_decode")
    if sd is None:
        return {"spec_decode": "null in the report"}
    out: dict[str, Check] = {}
    for key, ckey in (("drafts", "spec_drafts"), ("draft_tokens", "spec_draft_tokens"),
                      ("accepted_tokens", "spec_accepted_tokens"),
                      ("accepted_per_position", "spec_accepted_per_pos")):
        out[f"spec_{key}"] = sd[key] == counts[ckey] or f"{sd[key]} != {counts[ckey]}"
    rate = counts["spec_accepted_tokens"] / counts["spec_draft_tokens"] if counts["spec_draft_tokens"] else None
    out["spec_acceptance_rate"] = sd["acceptance_rate"] == rate or f"{sd['acceptance_rate']} != {rate}"
    out["spec_drafted"] = counts["spec_drafts"] > 0 or "vLLM drafted nothing"
    return out


def group_usage_per_step(session: Path) -> list[tuple[float, int, float | None]]:
    """(time, blocks held by all groups, the pool's usage at that moment) per sample, in order."""
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return c.execute("SELECT t_unix_s, SUM(blocks_used), MAX(kv_usage_frac) FROM kv_group_usage "
                         "GROUP BY t_unix_s ORDER BY t_unix_s").fetchall()


def group_blocks_match_usage(session: Path, counts: dict[str, Any], num_blocks: int) -> Check:
    """Recorded every step (``KVSCOPE_KV_GROUP_INTERVAL_MS=0``): the blocks the groups hold add up,
    step by step, to vLLM's own ``kv_cache_usage`` of that step (over ``num_blocks - 1``, vLLM's
    denominator), as the independent logger saw it."""
    rows = group_usage_per_step(session)
    want = counts["kv_usage"]
    if not rows:
        return "no kv_group_usage rows"
    # The engine core makes stats for its last step too; a program that stops stepping once its
    # requests are done never collects them, so one trailing sample may have no logger step.
    if not 0 <= len(rows) - len(want) <= 1:
        return f"{len(rows)} group samples vs {len(want)} engine steps"
    if any(u is not None and abs(blocks / (num_blocks - 1) - u) > 1e-9 for _, blocks, u in rows):
        return "a sample's groups do not add up to the pool usage stored beside it"
    for i, ((_, blocks, _), usage) in enumerate(zip(rows, want, strict=False)):
        if abs(blocks / (num_blocks - 1) - usage) > 1e-9:
            return f"step {i}: groups hold {blocks} blocks = {blocks / (num_blocks - 1):.6f}, vLLM usage {usage:.6f}"
    return True
