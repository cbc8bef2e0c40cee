"""The kvscope session format: one SQLite file (WAL) per session, schema versioned by user_version.

SCHEMA.md next to this module documents every table and column with its unit. This module owns the
DDL and the version check; writing lives in ``writer.py`` and reading in ``reader.py``.
"""

from __future__ import annotations

import sqlite3

from profiler.errors import SessionFormatError

SCHEMA_VERSION = 1
"""Bumped on every incompatible change; readers refuse files with a higher number."""

ENGINE_INPROC = "inproc"
"""``engines.source`` of an engine described by its frontend (recorded inside vLLM)."""
ENGINE_HEADLESS = "headless"
"""``engines.source`` of an engine core's own row on a node without a frontend (multi-node data
parallelism: ``vllm serve --headless``); a folder session's join maps it onto the frontend's row
of the same ``engine_index`` (``profiler.session.shards``)."""

TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "processes": ("pid", "role", "rank", "engine_id", "host", "started_unix_s"),
    "engines": (
        "engine_id", "pid", "engine_index", "label", "source", "created_unix_s", "vllm_version",
        "model", "block_size", "num_gpu_blocks", "gpu_memory_utilization", "enable_prefix_caching",
        "max_num_seqs", "max_num_batched_tokens", "max_model_len", "tensor_parallel_size",
        "pipeline_parallel_size", "data_parallel_size", "kv_cache_dtype", "device",
    ),
    "steps": (
        "engine_id", "t_unix_s", "running", "waiting", "kv_usage_frac", "prefix_queries_tokens",
        "prefix_hits_tokens", "preempted_prefix_queries_tokens", "preempted_prefix_hits_tokens",
        "preemptions", "prompt_tokens", "generation_tokens", "finished", "scraped",
    ),
    "requests": (
        "engine_id", "request_id", "t_finished_unix_s", "queued_s", "prefill_s", "decode_s",
        "inference_s", "e2e_s", "ttft_s", "prompt_tokens", "generation_tokens", "cached_tokens",
        "preemptions", "finish_reason",
    ),
    "prompt_blocks": ("engine_id", "t_unix_s", "request_id", "block_hashes"),
    "gpus": ("device_index", "name", "uuid", "total_bytes"),
    "gpu_samples": ("t_unix_s", "device_index", "used_bytes", "total_bytes"),
    "gpu_process_samples": ("t_unix_s", "device_index", "pid", "used_bytes"),
    "allocator_samples": (
        "t_unix_s", "pid", "device_index", "allocated_bytes", "reserved_bytes",
        "peak_allocated_bytes", "alloc_retries", "ooms",
    ),
    "startup_memory": (
        "t_unix_s", "pid", "rank", "device", "total_bytes", "budget_bytes", "weights_bytes",
        "activation_peak_bytes", "non_torch_bytes", "cuda_graph_bytes", "kv_cache_bytes",
        "free_after_bytes", "profile_s",
    ),
    "events": ("t_unix_s", "pid", "engine_id", "kind", "message", "details_json"),
    "kv_events": (
        "engine_id", "t_unix_s", "seq", "kind", "block_hash", "parent_block_hash", "medium", "source",
    ),
    "gaps": ("engine_id", "t_start_unix_s", "t_end_unix_s", "source", "reason"),
    "preemptions": (
        "engine_id", "t_unix_s", "request_id", "event", "reason", "computed_tokens",
        "prompt_tokens", "output_tokens", "blocks_freed", "kv_usage_before_frac",
        "kv_usage_after_frac", "queries_tokens", "hits_tokens",
    ),
    "kv_occupancy": ("engine_id", "t_unix_s", "used_blocks", "held_tokens"),
    "prompt_chunks": ("engine_id", "t_unix_s", "request_id", "chunk_tokens", "chunk_hashes"),
    "kv_evictions": ("engine_id", "t_unix_s", "lifetime_s", "idle_s", "reuse_gaps_json"),
    "kv_residency_hist": ("engine_id", "t_unix_s", "metric", "le", "cum_value"),
    "tier_samples": (
        "engine_id", "t_unix_s", "medium", "queries_tokens", "hits_tokens", "stored_bytes",
        "store_s", "loaded_bytes", "load_s", "usage_frac", "lookup_s", "lookups",
        "allocation_failures", "scraped", "details_json",
    ),
    "spec_decode_steps": (
        "engine_id", "t_unix_s", "drafts", "draft_tokens", "accepted_tokens", "accepted_per_pos",
    ),
    "kv_cache_groups": (
        "engine_id", "t_unix_s", "group_index", "kind", "layers", "layer_names", "block_size",
        "sliding_window_tokens", "page_size_bytes", "num_blocks", "is_draft",
    ),
    "kv_group_usage": ("engine_id", "t_unix_s", "group_index", "blocks_used", "kv_usage_frac"),
    "latency_buckets": ("engine_id", "t_unix_s", "metric", "lo_s", "hi_s", "observations"),
}
"""Column order of every table; writers append tuples in exactly this order."""

_TYPES = {
    "key": "TEXT PRIMARY KEY", "value": "TEXT", "role": "TEXT", "host": "TEXT", "label": "TEXT",
    "source": "TEXT", "vllm_version": "TEXT", "model": "TEXT", "kv_cache_dtype": "TEXT",
    "device": "TEXT", "request_id": "TEXT", "finish_reason": "TEXT", "block_hashes": "BLOB",
    "name": "TEXT", "uuid": "TEXT", "kind": "TEXT", "message": "TEXT", "details_json": "TEXT",
    "engine_id": "INTEGER", "enable_prefix_caching": "INTEGER", "medium": "TEXT", "reason": "TEXT",
    "accepted_per_pos": "TEXT", "layer_names": "TEXT", "metric": "TEXT",
    "event": "TEXT", "chunk_hashes": "BLOB", "reuse_gaps_json": "TEXT", "le": "TEXT",
    "cum_value": "REAL",
}


OPTIONAL_TABLES = frozenset({"kv_events", "gaps", "spec_decode_steps", "kv_cache_groups",
                             "kv_group_usage", "latency_buckets", "preemptions", "kv_occupancy",
                             "prompt_chunks", "kv_evictions", "kv_residency_hist",
                             "tier_samples"})
"""Tables that sessions recorded before they existed lack (the bundled sessions): a reader
treats a missing one as empty. Every other table, and every column of every table, must exist."""

UNIX_S_MAX = 1e10
"""Latest plausible unix time (year 2286); later (or negative) times are damage, not data."""
DURATION_S_MAX = 1e9
COUNT_MAX = 2**31
"""Largest plausible count (tokens, blocks, requests, pids) in one row."""
BYTES_MAX = 2**50
"""Largest plausible byte count in one row (1 PiB)."""
FRAC_TOLERANCE = 1e-3
"""How far above 1 a fraction may read (float rounding in vLLM's own numbers)."""


def column_rule(table: str, name: str) -> tuple[str, float | None, float | None]:
    """What a valid value of ``table.name`` is: ``(kind, lo, hi)``.

    kind is ``text`` (any text; numbers read as their text), ``blob`` (``block_hashes``: bytes, a
    whole number of int64), ``hash`` (any int64), ``any`` (meta values, checked by the reader), or
    ``number`` (a finite number within ``lo..hi``). The reader turns every other value into NULL
    and says so (``Session.notes``).
    """
    if table == "meta":
        return "any", None, None
    kind = _column_type(name)
    if name in ("block_hashes", "chunk_hashes"):
        return "blob", None, None
    if name in ("block_hash", "parent_block_hash"):
        return "hash", None, None
    if kind.startswith("TEXT") or kind == "BLOB":
        return "text", None, None
    if name.endswith("unix_s"):
        return "number", 0.0, UNIX_S_MAX
    if name.endswith("_frac"):
        return "number", 0.0, 1.0 + FRAC_TOLERANCE
    if name == "gpu_memory_utilization":
        return "number", 1e-6, 1.0 + FRAC_TOLERANCE
    if name in ("enable_prefix_caching", "is_draft"):
        return "number", 0, 1
    if name == "block_size":
        return "number", 1, 2**20
    if name.endswith("_s"):
        return "number", 0.0, DURATION_S_MAX
    if table == "startup_memory" and name == "kv_cache_bytes":
        # vLLM's KV budget after start-up: negative when start-up alone overran it (startup OOM)
        return "number", -BYTES_MAX, BYTES_MAX
    if name.endswith("_bytes"):
        return "number", 0, BYTES_MAX
    return "number", 0, COUNT_MAX


def column_type(name: str) -> str:
    """The SQLite type of a column named ``name`` (``INTEGER``, ``REAL``, ``TEXT``, ``BLOB``)."""
    return _column_type(name).split()[0]


def _column_type(name: str) -> str:
    if name in _TYPES:
        return _TYPES[name]
    if name.endswith(("_s", "_frac", "gpu_memory_utilization")):
        return "REAL"
    return "INTEGER"


def ddl() -> list[str]:
    """CREATE statements for every table and index of the current schema."""
    out = []
    for table, cols in TABLES.items():
        body = ", ".join(f"{c} {_column_type(c)}" for c in cols)
        if table == "engines":
            body = body.replace("engine_id INTEGER", "engine_id INTEGER PRIMARY KEY")
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
    out.append("CREATE INDEX IF NOT EXISTS requests_engine ON requests (engine_id)")
    out.append("CREATE INDEX IF NOT EXISTS events_kind ON events (kind)")
    return out


def create_or_check(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty file, or check that an existing one is a readable version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for stmt in ddl():
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return
    check_version(version)


def check_version(version: int) -> None:
    """Raise SessionFormatError unless ``version`` is one this kvscope reads."""
    if version > SCHEMA_VERSION:
        raise SessionFormatError(
            f"session schema v{version} is newer than this kvscope reads (v{SCHEMA_VERSION}); "
            "upgrade kvscope"
        )
    if version < 1:
        raise SessionFormatError("not a kvscope session (no schema version)")
