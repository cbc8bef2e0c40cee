"""Checks of a recorded session against the independent stat logger of ``workload.py --counts``,
shared by the CPU engine tests and the GPU scenario script (``bench/gpu_configs.py``).

Each returns ``True`` or a short text saying what differed (so a script can tabulate it and a test
can ``assert x is True, x``).
"""

from __future__ import annotations

import json
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


def own_counts_match(session: Path, counts: dict[str, Any]) -> Check:
    """kvscope's own output counts (``profiler/recorder/lean_stats.py``) against vLLM's
    ``IterationStats`` of the same run (``workload.py --counts`` with ``KVSCOPE_COUNT_OUTPUTS=1``):
    the session says it holds kvscope's counts; every step with outputs has the same prompt and
    generated tokens, preemptions and finished requests (kvscope also keeps the steps without
    outputs, which vLLM 0.2x's LLMEngine does not log); every finished request the same tokens,
    cached tokens, preemptions (where that vLLM reports them) and finish reason, the same engine-core intervals (queued, prefill, decode,
    inference), an end-to-end time within 50 ms of vLLM's (two clock reads around one batch) and a
    TTFT within it."""
    cols = ("queued_s", "prefill_s", "decode_s", "inference_s", "e2e_s", "prompt_tokens",
            "generation_tokens", "cached_tokens", "preemptions", "finish_reason")
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        start = c.execute("SELECT details_json FROM events WHERE kind = 'engine_start'").fetchone()
        steps = [list(r) if r[0] is not None else None for r in c.execute(
            "SELECT prompt_tokens, generation_tokens, preemptions, finished FROM steps "
            "ORDER BY rowid")]
        rows = {r[0]: dict(zip(("ttft_s", *cols), r[1:], strict=True)) for r in c.execute(
            f"SELECT request_id, ttft_s, {', '.join(cols)} FROM requests")}
    source = json.loads(start[0]).get("step_counts") if start and start[0] else None
    if source != "kvscope":
        return f"the session holds {source!r} counts, not kvscope's own"
    # steps without outputs have no counts: vLLM 0.2x's LLMEngine logs none of them, 0.3x all
    ours, theirs = [s for s in steps if s], [s for s in counts["step_counts"] if s]
    if ours != theirs or len(steps) < len(counts["step_counts"]):
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                     min(len(ours), len(theirs)))
        return (f"steps differ ({len(ours)} with outputs vs vLLM's {len(theirs)}; first at "
                f"{first}: {ours[first:first + 1]} vs {theirs[first:first + 1]})")
    if rows.keys() != counts["requests"].keys():
        return f"{len(rows)} finished requests vs vLLM's {len(counts['requests'])}"
    for rid, vllm in counts["requests"].items():
        ours = rows[rid]
        for col in ("prompt_tokens", "generation_tokens", "cached_tokens", "preemptions",
                    "finish_reason"):
            if vllm[col] is not None and ours[col] != vllm[col]:  # None: that vLLM lacks it
                return f"request {rid} {col}: {ours[col]} vs vLLM's {vllm[col]}"
        for col in ("queued_s", "prefill_s", "decode_s", "inference_s"):
            if ours[col] is None or abs(ours[col] - vllm[col]) > 1e-9:
                return f"request {rid} {col}: {ours[col]} vs vLLM's {vllm[col]}"
        if ours["e2e_s"] is None or abs(ours["e2e_s"] - vllm["e2e_s"]) > 0.05:
            return f"request {rid} e2e_s: {ours['e2e_s']} vs vLLM's {vllm['e2e_s']}"
        if ours["ttft_s"] is None or not 0 < ours["ttft_s"] <= ours["e2e_s"]:
            return f"request {rid} ttft_s {ours['ttft_s']} outside (0, e2e]"
    return True
