"""Step and request rows for a program that runs with vLLM's stats off, at a fraction of their cost.

Such a program (``vllm.LLM``'s default) pays nothing for stats. vLLM's stats path, switched on,
makes the frontend build an ``IterationStats`` and a ``RequestStateStats`` per output, keep LoRA
states and run a logger manager: work that, on a small machine, takes CPU from the engine core
that shares the frontend's core. So kvscope leaves the frontend's stats off and switches on only
the engine core's (``options.ENV_CORE_STATS``: its ``SchedulerStats`` and request events ride on the
outputs it sends anyway), and counts what it stores from each output batch itself, with vLLM's
definitions (``vllm/v1/metrics/stats.py``, the same in 0.29–0.33):

* a step: generated tokens (new token ids), prompt tokens (``prefill_stats.num_prompt_tokens`` of
  the requests that got their first output), preemptions (``PREEMPTED`` events), finished requests;
* a finished request: arrival (the frontend's ``arrival_time``) to the batch that finished it
  (end to end) and to its first output (TTFT); queued = first ``SCHEDULED`` - ``QUEUED``; prefill =
  first token - first scheduled; decode = last token - first token; inference = last token - first
  scheduled (engine-core timestamps); prompt, generated and cached tokens; preemptions.

A finish is what vLLM counts as one: the output processor dropped the request's state (a stop
string found by the detokenizer included); aborted requests are not rows, as in vLLM's stats.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from profiler.recorder.stat_logger import StepCounts, request_row

ENV_COUNT_OUTPUTS = "KVSCOPE_COUNT_OUTPUTS"
"""``1``: kvscope counts outputs itself even for a program with vLLM's stats on (the tests compare
its counts with vLLM's own, in the same run)."""

_ATTR = "_kvscope_lean"
"""Attribute of the OutputProcessor (its LeanStats) and of each RequestState (its _Request)."""


@dataclass(slots=True)
class _Request:
    """What kvscope keeps of one request in flight (vLLM's RequestStateStats, minus the rest)."""

    arrival_unix_s: float
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    ttft_s: float | None = None
    generation_tokens: int = 0
    preemptions: int = 0


def supported(output_processor_cls: type) -> bool:
    """True when this vLLM's output processor has the methods the lean path hooks."""
    return all(callable(getattr(output_processor_cls, name, None))
               for name in ("add_request", "process_outputs", "update_scheduler_stats"))


class LeanStats:
    """Counts one frontend's outputs; hands each step to the stat logger's ``write``."""

    def __init__(self, logger: Any) -> None:
        from vllm.v1.engine import EngineCoreEventType, FinishReason

        self.logger = logger
        self._queued = EngineCoreEventType.QUEUED
        self._scheduled = EngineCoreEventType.SCHEDULED
        self._preempted = EngineCoreEventType.PREEMPTED
        self._stop = FinishReason.STOP
        self._step: StepCounts | None = None
        self._now = 0.0

    def added(self, state: Any, arrival_unix_s: float | None) -> None:
        """A request entered the output processor (its state ``state``)."""
        setattr(state, _ATTR, _Request(arrival_unix_s if arrival_unix_s else time.time()))

    def before(self, states: dict[str, Any], outputs: Any, engine_ts: float | None) -> list[Any]:
        """Count a batch of outputs before vLLM processes it; the request states it touches (a step
        without outputs has no counts, as in vLLM: its row's counts are not measured)."""
        if not outputs:
            return []
        if self._step is None:
            self._step = StepCounts()
        step = self._step
        now = self._now = time.time()  # vLLM's iteration timestamp: before the batch's processing
        touched = []
        for out in outputs:
            state = states.get(out.request_id)
            req = getattr(state, _ATTR, None)
            if req is None:
                continue
            touched.append((out, state))
            n = len(out.new_token_ids)
            step.generation_tokens += n
            req.generation_tokens += n
            for ev in out.events or ():
                if ev.type == self._queued:
                    req.queued_ts = ev.timestamp
                elif ev.type == self._scheduled:
                    if req.scheduled_ts == 0.0:
                        req.scheduled_ts = ev.timestamp
                elif ev.type == self._preempted:
                    req.preemptions += 1
                    step.preemptions += 1
            if state.is_prefilling:
                prefill = getattr(out, "prefill_stats", None)
                if prefill is not None:
                    step.prompt_tokens += prefill.num_prompt_tokens
                req.ttft_s = now - req.arrival_unix_s
                req.first_token_ts = engine_ts or 0.0
            req.last_token_ts = engine_ts or 0.0
        return touched

    def after(self, states: dict[str, Any], touched: list[Any]) -> None:
        """Turn the requests the batch finished (their state is gone) into rows."""
        step = self._step
        if step is None:
            return
        now = self._now
        for out, state in touched:
            if states.get(out.request_id) is state:
                continue
            req: _Request = getattr(state, _ATTR)
            step.finished.append(request_row(
                self.logger.engine_id, getattr(state, "external_req_id", None) or out.request_id,
                now, out.finish_reason if out.finish_reason is not None else self._stop,
                e2e_s=now - req.arrival_unix_s, ttft_s=req.ttft_s,
                queued_s=_span(req.queued_ts, req.scheduled_ts),
                prefill_s=_span(req.scheduled_ts, req.first_token_ts),
                decode_s=_span(req.first_token_ts, req.last_token_ts),
                inference_s=_span(req.scheduled_ts, req.last_token_ts),
                prompt_tokens=getattr(state, "prompt_len", None),
                generation_tokens=req.generation_tokens,
                cached_tokens=getattr(state, "num_cached_tokens", None),
                preemptions=req.preemptions))

    def step(self, scheduler_stats: Any) -> None:
        """The engine core's step ended (its scheduler stats arrived): write the step."""
        counts, self._step = self._step, None
        self.logger.write(scheduler_stats, counts)


def _span(start_ts: float, end_ts: float) -> float | None:
    """``end - start`` of two engine-core timestamps; None when either was never seen."""
    return end_ts - start_ts if start_ts and end_ts else None


def attach(engine: Any, logger: Any) -> bool:
    """Count ``engine``'s outputs for ``logger`` (its output processor's hooks); False when this
    vLLM's output processor lacks what they need."""
    processor = getattr(engine, "output_processor", None)
    if processor is None or not supported(type(processor)):
        return False
    setattr(processor, _ATTR, LeanStats(logger))
    return True


def wrap_add_request(method: Any) -> Any:
    """``OutputProcessor.add_request``: keep the request's arrival time next to its state."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, request, *args, **kwargs)
        lean = getattr(self, _ATTR, None)
        if lean is not None:
            try:
                state = self.request_states.get(request.request_id)
                if state is not None:
                    lean.added(state, getattr(request, "arrival_time", None))
            except Exception:
                pass
        return out

    return wrapper


def wrap_process_outputs(method: Any) -> Any:
    """``OutputProcessor.process_outputs``: count the batch around vLLM's processing of it."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, outputs: Any, engine_core_timestamp: Any = None, *args: Any,
                **kwargs: Any) -> Any:
        lean = getattr(self, _ATTR, None)
        if lean is None:
            return method(self, outputs, engine_core_timestamp, *args, **kwargs)
        try:
            touched = lean.before(self.request_states, outputs, engine_core_timestamp)
        except Exception as exc:
            _give_up(self, lean, exc)
            return method(self, outputs, engine_core_timestamp, *args, **kwargs)
        result = method(self, outputs, engine_core_timestamp, *args, **kwargs)
        try:
            lean.after(self.request_states, touched)
        except Exception as exc:
            _give_up(self, lean, exc)
        return result

    return wrapper


def wrap_update_scheduler_stats(method: Any) -> Any:
    """``OutputProcessor.update_scheduler_stats``: called once per engine-core step, after its
    outputs were processed (LLMEngine.step, AsyncLLM's output handler)."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, scheduler_stats: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, scheduler_stats, *args, **kwargs)
        lean = getattr(self, _ATTR, None)
        if lean is not None:
            try:
                lean.step(scheduler_stats)
            except Exception as exc:
                _give_up(self, lean, exc)
        return out

    return wrapper


def _give_up(processor: Any, lean: LeanStats, exc: BaseException) -> None:
    """A surprise in this vLLM's outputs: one error event, then no more counting."""
    setattr(processor, _ATTR, None)
    w = getattr(lean.logger, "writer", None)
    if w is not None:
        w.event("error", f"kvscope could not count vLLM's outputs: {exc!r}", lean.logger.engine_id)


def wanted(user_log_stats: bool) -> bool:
    """True when kvscope should count outputs itself: the program runs with stats off (or
    ``ENV_COUNT_OUTPUTS`` asks for it)."""
    return not user_log_stats or os.environ.get(ENV_COUNT_OUTPUTS) == "1"
