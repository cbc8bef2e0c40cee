"""A record type per session table row: writers build rows by column name, in ``TABLES`` order.

Each is a ``NamedTuple`` (so it goes to ``SessionWriter.append`` and SQLite as the tuple it is);
``tests/test_house_rows.py`` checks every type against ``schema.TABLES``.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ProcessRow(NamedTuple):
    """One ``processes`` row (units: SCHEMA.md)."""

    pid: int | None
    role: str | None
    rank: int | None
    engine_id: int | None
    host: str | None
    started_unix_s: float | None


class EngineRow(NamedTuple):
    """One ``engines`` row (units: SCHEMA.md)."""

    engine_id: int | None
    pid: int | None
    engine_index: int | None
    label: str | None
    source: str | None
    created_unix_s: float | None
    vllm_version: str | None
    model: str | None
    block_size: int | None
    num_gpu_blocks: int | None
    gpu_memory_utilization: float | None
    enable_prefix_caching: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    max_model_len: int | None
    tensor_parallel_size: int | None
    pipeline_parallel_size: int | None
    data_parallel_size: int | None
    kv_cache_dtype: str | None
    device: str | None


class StepRow(NamedTuple):
    """One ``steps`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    running: int | None
    waiting: int | None
    kv_usage_frac: float | None
    prefix_queries_tokens: int | None
    prefix_hits_tokens: int | None
    preempted_prefix_queries_tokens: int | None
    preempted_prefix_hits_tokens: int | None
    preemptions: int | None
    prompt_tokens: int | None
    generation_tokens: int | None
    finished: int | None
    scraped: int | None


class RequestRow(NamedTuple):
    """One ``requests`` row (units: SCHEMA.md)."""

    engine_id: int | None
    request_id: str | None
    t_finished_unix_s: float | None
    queued_s: float | None
    prefill_s: float | None
    decode_s: float | None
    inference_s: float | None
    e2e_s: float | None
    ttft_s: float | None
    prompt_tokens: int | None
    generation_tokens: int | None
    cached_tokens: int | None
    preemptions: int | None
    finish_reason: str | None


class PromptBlocksRow(NamedTuple):
    """One ``prompt_blocks`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    request_id: str | None
    block_hashes: bytes


class GpuRow(NamedTuple):
    """One ``gpus`` row (units: SCHEMA.md)."""

    device_index: int | None
    name: str | None
    uuid: str | None
    total_bytes: int | None


class GpuSampleRow(NamedTuple):
    """One ``gpu_samples`` row (units: SCHEMA.md)."""

    t_unix_s: float | None
    device_index: int | None
    used_bytes: int | None
    total_bytes: int | None


class GpuProcessSampleRow(NamedTuple):
    """One ``gpu_process_samples`` row (units: SCHEMA.md)."""

    t_unix_s: float | None
    device_index: int | None
    pid: int | None
    used_bytes: int | None


class AllocatorSampleRow(NamedTuple):
    """One ``allocator_samples`` row (units: SCHEMA.md)."""

    t_unix_s: float | None
    pid: int | None
    device_index: int | None
    allocated_bytes: int | None
    reserved_bytes: int | None
    peak_allocated_bytes: int | None
    alloc_retries: int | None
    ooms: int | None


class StartupMemoryRow(NamedTuple):
    """One ``startup_memory`` row (units: SCHEMA.md)."""

    t_unix_s: float | None
    pid: int | None
    rank: int | None
    device: str | None
    total_bytes: int | None
    budget_bytes: int | None
    weights_bytes: int | None
    activation_peak_bytes: int | None
    non_torch_bytes: int | None
    cuda_graph_bytes: int | None
    kv_cache_bytes: int | None
    free_after_bytes: int | None
    profile_s: float | None


class EventRow(NamedTuple):
    """One ``events`` row (units: SCHEMA.md)."""

    t_unix_s: float | None
    pid: int | None
    engine_id: int | None
    kind: str | None
    message: str | None
    details_json: str | None


class KvEventRow(NamedTuple):
    """One ``kv_events`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    seq: int | None
    kind: str | None
    block_hash: int | None
    parent_block_hash: int | None
    medium: str | None
    source: str | None


class GapRow(NamedTuple):
    """One ``gaps`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_start_unix_s: float | None
    t_end_unix_s: float | None
    source: str | None
    reason: str | None


class PreemptionRow(NamedTuple):
    """One ``preemptions`` row (units: SCHEMA.md): a preemption, or a preempted request's resume."""

    engine_id: int | None
    t_unix_s: float | None
    request_id: str | None
    event: str | None
    reason: str | None
    computed_tokens: int | None
    prompt_tokens: int | None
    output_tokens: int | None
    blocks_freed: int | None
    kv_usage_before_frac: float | None
    kv_usage_after_frac: float | None
    queries_tokens: int | None
    hits_tokens: int | None


class KvOccupancyRow(NamedTuple):
    """One ``kv_occupancy`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    used_blocks: int | None
    held_tokens: int | None


class PromptChunksRow(NamedTuple):
    """One ``prompt_chunks`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    request_id: str | None
    chunk_tokens: int | None
    chunk_hashes: bytes


class KvEvictionRow(NamedTuple):
    """One ``kv_evictions`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    lifetime_s: float | None
    idle_s: float | None
    reuse_gaps_json: str | None


class KvResidencyHistRow(NamedTuple):
    """One ``kv_residency_hist`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    metric: str | None
    le: str | None
    cum_value: float | None


class TierSampleRow(NamedTuple):
    """One ``tier_samples`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    medium: str | None
    queries_tokens: int | None
    hits_tokens: int | None
    stored_bytes: int | None
    store_s: float | None
    loaded_bytes: int | None
    load_s: float | None
    usage_frac: float | None
    lookup_s: float | None
    lookups: int | None
    allocation_failures: int | None
    scraped: int | None
    details_json: str | None


class SpecDecodeStepRow(NamedTuple):
    """One ``spec_decode_steps`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    drafts: int | None
    draft_tokens: int | None
    accepted_tokens: int | None
    accepted_per_pos: str | None
    """JSON list: accepted draft tokens at position 1..k, summed over this step's drafts."""


class KvCacheGroupRow(NamedTuple):
    """One ``kv_cache_groups`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    group_index: int | None
    kind: str | None
    layers: int | None
    layer_names: str | None
    """JSON list of the group's layer names."""
    block_size: int | None
    sliding_window_tokens: int | None
    page_size_bytes: int | None
    num_blocks: int | None
    is_draft: int | None


class KvGroupUsageRow(NamedTuple):
    """One ``kv_group_usage`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    group_index: int | None
    blocks_used: int | None
    kv_usage_frac: float | None


class LatencyBucketRow(NamedTuple):
    """One ``latency_buckets`` row (units: SCHEMA.md)."""

    engine_id: int | None
    t_unix_s: float | None
    metric: str | None
    lo_s: float | None
    hi_s: float | None
    observations: int | None


ROW_TYPES: dict[str, type[Any]] = {
    "processes": ProcessRow,
    "engines": EngineRow,
    "steps": StepRow,
    "requests": RequestRow,
    "prompt_blocks": PromptBlocksRow,
    "gpus": GpuRow,
    "gpu_samples": GpuSampleRow,
    "gpu_process_samples": GpuProcessSampleRow,
    "allocator_samples": AllocatorSampleRow,
    "startup_memory": StartupMemoryRow,
    "events": EventRow,
    "kv_events": KvEventRow,
    "gaps": GapRow,
    "preemptions": PreemptionRow,
    "kv_occupancy": KvOccupancyRow,
    "prompt_chunks": PromptChunksRow,
    "kv_evictions": KvEvictionRow,
    "kv_residency_hist": KvResidencyHistRow,
    "tier_samples": TierSampleRow,
    "spec_decode_steps": SpecDecodeStepRow,
    "kv_cache_groups": KvCacheGroupRow,
    "kv_group_usage": KvGroupUsageRow,
    "latency_buckets": LatencyBucketRow,
}
"""The record type of every table but ``meta`` (a key/value store)."""
