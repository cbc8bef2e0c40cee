"""vLLM stats collector: a StatLoggerBase that turns every engine step into session rows.

vLLM calls ``record`` in the frontend process once per engine-core output batch. The fields of
SchedulerStats / IterationStats / FinishedRequestStats are "not stable interfaces", so every read
goes through getattr with a None default: a field a vLLM version lacks is stored as NULL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from profiler.recorder import context, kv_groups, prompt_blocks, spec_decode, tiers
from profiler.session.rows import KvEvictionRow, RequestRow, StepRow
from profiler.session.schema import ENGINE_HEADLESS, ENGINE_INPROC


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _version() -> str | None:
    try:
        from vllm import __version__

        return str(__version__)
    except Exception:
        return None


def engine_row(vllm_config: Any, engine_index: int) -> dict[str, Any]:
    """The static description of one engine, read defensively from its VllmConfig."""
    cache = _get(vllm_config, "cache_config")
    sched = _get(vllm_config, "scheduler_config")
    model = _get(vllm_config, "model_config")
    par = _get(vllm_config, "parallel_config")
    prefix = _get(cache, "enable_prefix_caching")
    name = _get(model, "served_model_name") or _get(model, "model")
    if isinstance(name, list):  # served_model_name may list several aliases
        name = name[0] if name else None
    return {
        "pid": os.getpid(),
        "engine_index": engine_index,
        "source": ENGINE_INPROC,
        "created_unix_s": time.time(),
        "vllm_version": _version(),
        "model": name,
        "block_size": _get(cache, "block_size"),
        "num_gpu_blocks": _get(cache, "num_gpu_blocks"),
        "gpu_memory_utilization": _get(cache, "gpu_memory_utilization"),
        "enable_prefix_caching": None if prefix is None else int(bool(prefix)),
        "max_num_seqs": _get(sched, "max_num_seqs"),
        "max_num_batched_tokens": _get(sched, "max_num_batched_tokens"),
        "max_model_len": _get(model, "max_model_len"),
        "tensor_parallel_size": _get(par, "tensor_parallel_size"),
        "pipeline_parallel_size": _get(par, "pipeline_parallel_size"),
        "data_parallel_size": _get(par, "data_parallel_size"),
        "kv_cache_dtype": str(_get(cache, "cache_dtype")),
        "device": str(_get(vllm_config, "device_config", "device_type")),
    }


_pending_engine_id: int | None = None
"""Row written for engine index 0 before its engine core started (see ``insert_pending_engine``)."""


def data_parallel(vllm_config: Any) -> bool:
    size = _get(vllm_config, "parallel_config", "data_parallel_size")
    return isinstance(size, int) and size > 1


def insert_engine(writer: Any, row: dict[str, Any]) -> int | None:
    """Insert one ``engines`` row; returns its engine_id."""
    cols = ", ".join(row)
    return writer.execute_now(
        f"INSERT INTO engines ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
    )


def insert_pending_engine(writer: Any, vllm_config: Any) -> int | None:
    """Describe the engine before it starts, so a start-up failure still has its config; its id."""
    global _pending_engine_id
    _pending_engine_id = insert_engine(writer, engine_row(vllm_config, 0))
    # the engine core (a child process, or this one) tags its own rows with it (KV-cache groups,
    # preemptions, occupancy, KV events)
    os.environ[kv_groups.ENV_ENGINE_ID] = str(_pending_engine_id)
    return _pending_engine_id


def insert_headless_engine(writer: Any, vllm_config: Any, engine_index: int) -> int | None:
    """Describe an engine core that has no frontend on its node (no pending engine was handed down
    to it): its rows need an engine id in this node's shard; returns it."""
    return insert_engine(writer, {**engine_row(vllm_config, engine_index), "source": ENGINE_HEADLESS,
                                  "label": f"DP rank {engine_index} (headless node)"})


def adopt_pending_engine(engine_index: int) -> int | None:
    """The pending row's id for the first engine index-0 logger of this process (then cleared)."""
    global _pending_engine_id
    if engine_index != 0 or _pending_engine_id is None:
        return None
    engine_id, _pending_engine_id = _pending_engine_id, None
    return engine_id


def _name(value: Any) -> str | None:
    if value is None:
        return None
    return getattr(value, "name", None) or str(value)


def request_row(engine_id: int | None, request_id: Any, t_finished_unix_s: float,
                finish_reason: Any, **values: Any) -> RequestRow:
    """One ``requests`` row (``values``: its measured fields; a finish reason enum by name)."""
    return RequestRow(engine_id=engine_id, request_id=request_id,
                      t_finished_unix_s=t_finished_unix_s, finish_reason=_name(finish_reason),
                      **values)


@dataclass(slots=True)
class StepCounts:
    """One engine step's output counts and the requests it finished (rows ready to store)."""

    preemptions: int | None = 0
    prompt_tokens: int | None = 0
    generation_tokens: int | None = 0
    finished: list[Any] = field(default_factory=list)


class KvscopeStatLogger(StatLoggerBase):
    """Writes one ``steps`` row per record() and one ``requests`` row per finished request."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.vllm_config = vllm_config
        self.writer = context.writer()
        self.engine_id: int | None = None
        self.step_counts = "vllm"
        """Where step and request counts come from: vLLM's IterationStats (``vllm``), or kvscope's
        own count of the outputs (``kvscope``: ``lean_stats``); stored in ``engine_start``."""
        self.tier_medium = tiers.connector_medium(vllm_config)
        if self.writer is None:
            return
        row = engine_row(vllm_config, engine_index)
        if data_parallel(vllm_config):  # vLLM's frontend sums the ranks' blocks: the core
            row.pop("num_gpu_blocks")     # stores its own (kv_groups.record_groups)
        self.engine_id = adopt_pending_engine(engine_index)
        if self.engine_id is None:
            self.engine_id = insert_engine(self.writer, row)
        else:
            sets = ", ".join(f"{k} = ?" for k in row)
            self.writer.execute_now(
                f"UPDATE engines SET {sets} WHERE engine_id = ?", (*row.values(), self.engine_id)
            )
        prompt_blocks.set_target(
            self.engine_id, row["block_size"] if row["enable_prefix_caching"] else None,
            engine_index)
        self.writer.set_meta_default(vllm_version=row["vllm_version"], model=row["model"])
        context.register_process("frontend", engine_id=self.engine_id)
        spec_decode.record_config(self.writer, vllm_config, self.engine_id)
        obs = _get(vllm_config, "observability_config")
        if getattr(obs, "kv_cache_metrics", False):
            sample = getattr(obs, "kv_cache_metrics_sample", None)
            self.writer.event("kv_cache_metrics", f"vLLM block residency sampling at {sample}",
                              self.engine_id, sample=sample)
        if self.tier_medium is not None:
            ktc = _get(vllm_config, "kv_transfer_config")
            self.writer.event(
                "kv_connector", f"KV connector {_get(ktc, 'kv_connector')}: tier {self.tier_medium}",
                self.engine_id, connector=str(_get(ktc, "kv_connector")), medium=self.tier_medium,
                capacity_bytes=tiers.connector_capacity_bytes(vllm_config),
                role=str(_get(ktc, "kv_role")))

    def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
        """Append this step's row; never raises into the engine."""
        if self.writer is None:
            return
        try:
            counts = None if iteration_stats is None else self._counts(iteration_stats)
        except Exception as exc:
            self._stop(exc)
            return
        self.write(scheduler_stats, counts)

    def write(self, scheduler_stats: Any, counts: StepCounts | None) -> None:
        """Append one step: the engine core's scheduler stats and the step's output counts (None:
        the step had no outputs); never raises into the engine."""
        w = self.writer
        if w is None or (scheduler_stats is None and counts is None):
            return
        try:
            self._write(w, scheduler_stats, counts)
        except Exception as exc:
            self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        if self.writer is not None:
            self.writer.event("error", f"kvscope could not read vLLM stats: {exc!r}", self.engine_id)
        self.writer = None  # stop after the first failure rather than flood events

    def _write(self, w: Any, s: Any, counts: StepCounts | None) -> None:
        t = time.time()
        running = waiting = kv = pq = ph = ppq = pph = None
        spec = spec_decode.step_row(self.engine_id, t, getattr(s, "spec_decoding_stats", None))
        if spec is not None:
            w.append("spec_decode_steps", spec)
        if s is not None:
            running = getattr(s, "num_running_reqs", None)
            waiting = getattr(s, "num_waiting_reqs", None)
            kv = getattr(s, "kv_cache_usage", None)
            pcs = getattr(s, "prefix_cache_stats", None)
            if pcs is not None:
                pq = getattr(pcs, "queries", None)
                ph = getattr(pcs, "hits", None)
                ppq = getattr(pcs, "preempted_queries", None)
                pph = getattr(pcs, "preempted_hits", None)
                if getattr(pcs, "reset", False):
                    w.event("prefix_cache_reset", "prefix cache was reset", self.engine_id)
            for ev in getattr(s, "kv_cache_eviction_events", None) or ():
                gaps = getattr(ev, "reuse_gaps_seconds", None)
                w.append("kv_evictions", KvEvictionRow(
                    self.engine_id, t, getattr(ev, "lifetime_seconds", None),
                    getattr(ev, "idle_seconds", None),
                    json.dumps([float(g) for g in gaps]) if gaps is not None else None))
            for row in tiers.tier_rows(s, self.engine_id, t, self.tier_medium):
                w.append("tier_samples", row)
        pre = prompt = gen = fin = None
        if counts is not None:
            pre, prompt, gen = counts.preemptions, counts.prompt_tokens, counts.generation_tokens
            fin = len(counts.finished)
            for row in counts.finished:
                w.append("requests", row)
        w.append("steps", StepRow(
            engine_id=self.engine_id, t_unix_s=t, running=running, waiting=waiting, kv_usage_frac=kv,
            prefix_queries_tokens=pq, prefix_hits_tokens=ph, preempted_prefix_queries_tokens=ppq,
            preempted_prefix_hits_tokens=pph, preemptions=pre, prompt_tokens=prompt,
            generation_tokens=gen, finished=fin, scraped=0,
        ))
        if running == 0 and waiting == 0:
            # The engine just drained: make the run durable now, programs often exit right after.
            w.flush()

    def _counts(self, it: Any) -> StepCounts:
        """vLLM's IterationStats as kvscope's step counts (fields read defensively)."""
        ttfts: dict[str, float] = getattr(it, "_kvscope_ttft_s", None) or {}
        now = time.time()
        finished = [
            request_row(
                self.engine_id, getattr(f, "request_id", None), now, getattr(f, "finish_reason", None),
                queued_s=getattr(f, "queued_time", None), prefill_s=getattr(f, "prefill_time", None),
                decode_s=getattr(f, "decode_time", None),
                inference_s=getattr(f, "inference_time", None),
                e2e_s=getattr(f, "e2e_latency", None),
                ttft_s=ttfts.get(getattr(f, "request_id", None)),
                prompt_tokens=getattr(f, "num_prompt_tokens", None),
                generation_tokens=getattr(f, "num_generation_tokens", None),
                cached_tokens=getattr(f, "num_cached_tokens", None),
                preemptions=getattr(f, "num_preemptions", None))
            for f in getattr(it, "finished_requests", None) or ()]
        return StepCounts(getattr(it, "num_preempted_reqs", None),
                          getattr(it, "num_prompt_tokens", None),
                          getattr(it, "num_generation_tokens", None), finished)

    def log_engine_initialized(self) -> None:
        """Store the KV cache size the engine settled on and an ``engine_start`` event."""
        if self.writer is None:
            return
        cache = _get(self.vllm_config, "cache_config")
        blocks = _get(cache, "num_gpu_blocks")
        if data_parallel(self.vllm_config):
            # the sum over the ranks this frontend started (vLLM adds up each engine core's
            # count): each engine core stores its own count on its engine row
            self.writer.execute_now("UPDATE engines SET block_size = ? WHERE engine_id = ?",
                                    (_get(cache, "block_size"), self.engine_id))
            self.writer.event("engine_start", f"engine ready: {blocks} KV blocks over the "
                              "data-parallel ranks", self.engine_id, num_gpu_blocks_all_ranks=blocks,
                              step_counts=self.step_counts)
            return
        self.writer.execute_now(
            "UPDATE engines SET num_gpu_blocks = ?, block_size = ? WHERE engine_id = ?",
            (blocks, _get(cache, "block_size"), self.engine_id),
        )
        self.writer.event(
            "engine_start", f"engine ready: {blocks} KV blocks", self.engine_id, num_gpu_blocks=blocks,
            step_counts=self.step_counts)

    def log(self) -> None:
        """vLLM's periodic log hook: kvscope writes continuously, nothing to do."""
