"""The kvscope session format: one SQLite file (WAL) per session, schema versioned by user_version.

SCHEMA.md next to this module documents every table and column with its unit. This module owns the
DDL and the version check; writing lives in ``writer.py`` and reading in ``reader.py``.
"""

from __future__ import annotations

import sqlite3

from profiler.errors import SessionFormatError

SCHEMA_VERSION = 1
"""Bumped on every incompatible change; readers refuse files with a higher number."""

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
}
"""Column order of every table; writers append tuples in exactly this order."""

_TYPES = {
    "key": "TEXT PRIMARY KEY", "value": "TEXT", "role": "TEXT", "host": "TEXT", "label": "TEXT",
    "source": "TEXT", "vllm_version": "TEXT", "model": "TEXT", "kv_cache_dtype": "TEXT",
    "device": "TEXT", "request_id": "TEXT", "finish_reason": "TEXT", "block_hashes": "BLOB",
    "name": "TEXT", "uuid": "TEXT", "kind": "TEXT", "message": "TEXT", "details_json": "TEXT",
    "engine_id": "INTEGER", "enable_prefix_caching": "INTEGER", "medium": "TEXT", "reason": "TEXT",
}


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
