"""Every threshold the diagnosis rules use, in one place, each with what it means and why.

Durations are measured as time-weighted shares of the engine's *busy* time (steps with at least
one running or waiting request), plus a minimum number of steps, rather than in seconds: a tiny
CPU model finishes in a second what a GPU deployment spends minutes on, and both should read the
same.
"""

from __future__ import annotations

# --- "sustained" ---------------------------------------------------------------------------
SUSTAINED_MIN_STEPS = 20
"""A condition must hold on at least this many engine steps to count as sustained."""
SUSTAINED_MIN_BUSY_FRAC = 0.15
"""... and for at least this share of the busy time."""
CRITICAL_BUSY_FRAC = 0.5
"""A warning becomes critical when its condition holds for this share of the busy time."""
MERGE_GAP_S = 1.0
"""Qualifying steps closer than this are one episode (for the reported time range)."""

# --- KV cache ------------------------------------------------------------------------------
KV_CEILING_FRAC = 0.95
"""KV usage at or above this is "at the ceiling" (vLLM keeps a few blocks for watermarks)."""
KV_TARGET_FRAC = 0.90
"""Recommendations size the KV cache so that peak demand uses at most this share of it."""
KV_OVERPROVISIONED_PEAK_FRAC = 0.50
"""A loaded engine whose KV usage never exceeded this share has KV memory to spare."""

# --- preemption ----------------------------------------------------------------------------
PREEMPTION_MIN_COUNT = 5
"""Fewer preemptions than this in a whole session are not a storm."""
PREEMPTED_REQUESTS_FRAC = 0.10
"""A storm: at least this share of finished requests were preempted at least once ..."""
PREEMPTION_REPEAT_COUNT = 3
"""... or some request was preempted at least this many times."""
PREEMPTION_CRITICAL_RECOMPUTE_FRAC = 0.25
"""Critical when prompt tokens recomputed after preemption reach this share of all prompt tokens."""

# --- prefix cache --------------------------------------------------------------------------
THRASH_MIN_REUSE_FRAC = 0.20
"""Prefix thrash needs real reuse: an unbounded cache would hit at least this share of tokens."""
THRASH_MAX_KEPT_FRAC = 0.75
"""Thrash: the measured hit rate is at most this share of the unbounded-cache hit rate ..."""
THRASH_MIN_LOST_FRAC = 0.10
"""... and at least this share of all prompt tokens (absolute) was recomputed for lack of space."""
THRASH_TARGET_OF_MAX = 0.90
"""The recommended cache size keeps this share of the unbounded-cache hits (the curve's knee)."""
RESTORE_THRASH_FRAC = 0.20
"""KV events: re-stores of evicted hashes at or above this share of all stores mean thrash."""

# --- scheduler -----------------------------------------------------------------------------
TOKEN_BUDGET_BOUND_FRAC = 0.90
"""A step that scheduled this share of max_num_batched_tokens was limited by the token budget."""
KV_QUEUE_ROOM_FRAC = 0.80
"""Queueing is not memory-bound when KV usage stays below this while requests wait."""
QUEUE_LATENCY_FRAC = 0.50
"""Sustained queueing is a warning only when the median request spends at least this share of its
end-to-end time queued; below that it is reported as info (bursts absorbed by the queue)."""

# --- GPU memory ----------------------------------------------------------------------------
GPU_USED_FRAC = 0.97
"""NVML used/total at or above this is pressure (allocations may fail at any moment)."""
FOREIGN_PROCESS_MIN_BYTES = 256 * 2**20
"""A process outside the session using at least this much of an engine's GPU is reported."""
FRAGMENTATION_MIN_BYTES = 2**30
"""Allocator reserved minus allocated above this (and above the share below) is fragmentation."""
FRAGMENTATION_FRAC = 0.30
"""Share of reserved memory that is not allocated, for fragmentation."""
OOM_LOOKBACK_S = 30.0
"""OOM_RUNTIME compares memory at the OOM with this many seconds before it."""

# --- what the fixes assume -----------------------------------------------------------------
MAX_GPU_MEMORY_UTILIZATION = 0.95
"""Highest gpu_memory_utilization a recommendation proposes; beyond it, fp8 KV or more GPUs."""

# --- tokens and tiers (diagnosis/tokens.py, diagnosis/tiers.py) ----------------------------
BELOW_BLOCK_MIN_QUERY_TOKENS = 1000
"""PREFIX_BELOW_BLOCK needs at least this many queried prompt tokens (a real workload, not one
request) before 0 hits means anything."""
BELOW_BLOCK_MIN_HIT_FRAC = 0.05
"""...and a smaller block size whose predicted hit rate (same KV memory) reaches this."""
TIER_MIN_STORED_BYTES = 64 * 2**20
"""A tier that stored less than this is too idle to judge (TIER_WRITE_ONLY)."""
TIER_WRITE_ONLY_FRAC = 0.01
"""Loads below this fraction of the bytes stored (and tier hits below this fraction of its
queries): the tier is written but never read."""
TIER_SLOW_LOAD_RATIO = 1.0
"""TIER_SLOW_LOAD when loading a token from the tier is slower than this × prefilling it again."""
TIER_MIN_LOAD_S = 0.01
"""Measured load time needed before the tier's load bandwidth is trusted."""
