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

A finish is what vLLM counts as one: the output processor finished the request while processing
a batch (a stop string found by the detokenizer included; the reason is then ``STOP``); aborted
requests are not rows, as in vLLM's stats.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from profiler.recorder.stat_logger import StepCounts, request_row

ENV_COUNT_OUTPUTS = "KVSCOPE_COUNT_OUTPUTS"
"""``1``: kvscope counts outputs itself even for a program with vLLM's stats on (the tests compare
its counts with vLLM's own, in the same run); ``0``: it never does (vLLM's stats are switched on
for a program that had them off, as before kvscope counted outputs itself)."""

_ATTR = "_kvscope_lean"
"""Attribute of the OutputProcessor holding its LeanStats."""


@dataclass(slots=True)
class _Request:
    """What kvscope keeps of one request in flight (vLLM's RequestStateStats, minus the rest)."""

    arrival_unix_s: float
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    ttft_s: float | None = None
    generation_tokens: int = 0
    preemptions: int = 0
    finish_reason: Any = None


def supported(output_processor_cls: type) -> bool:
    """True when this vLLM's output processor has the methods the lean path hooks and its outputs
    carry ``prefill_stats`` (the prompt tokens of a step; vLLM before it counted prompt lengths
    itself: kvscope then keeps vLLM's stats path)."""
    try:
        from vllm.v1.engine import EngineCoreOutput

        fields = getattr(EngineCoreOutput, "__struct_fields__", ())
    except ImportError:
        return False
    return "prefill_stats" in fields and all(
        callable(getattr(output_processor_cls, name, None))
        for name in ("add_request", "process_outputs", "update_scheduler_stats",
                     "_finish_request", "abort_requests"))


class LeanStats:
    """Counts one frontend's outputs; hands each step to the stat logger's ``write``.

    Per output it does a dictionary lookup and two additions (the first output of a request, one
    with events and the finishing one do a little more); finishes come from the output
    processor's own ``_finish_request``, aborts from its ``abort_requests``."""

    def __init__(self, logger: Any) -> None:
        from vllm.v1.engine import EngineCoreEventType, FinishReason

        self.logger = logger
        self._queued = EngineCoreEventType.QUEUED
        self._scheduled = EngineCoreEventType.SCHEDULED
        self._preempted = EngineCoreEventType.PREEMPTED
        self._stop = FinishReason.STOP
        self._reqs: dict[str, _Request] = {}
        self._step: StepCounts | None = None
        self._now = 0.0
        self._engine_ts = 0.0
        self.in_batch = False
        """True while vLLM processes a batch (a finish outside one, e.g. the end of a streamed
        input, is not a finished request in vLLM's stats either)."""

    def added(self, request_id: str, arrival_unix_s: float | None) -> None:
        """A request entered the output processor."""
        self._reqs[request_id] = _Request(arrival_unix_s if arrival_unix_s else time.time())

    def aborted(self, request_ids: Any) -> None:
        """Requests the output processor aborted: not finished requests (as in vLLM's stats)."""
        for rid in request_ids or ():
            self._reqs.pop(rid, None)

    def before(self, outputs: Any, engine_ts: float | None) -> None:
        """Count a batch of outputs before vLLM processes it (a step without outputs has no
        counts, as in vLLM: its row's counts are not measured)."""
        if not outputs:
            return
        if self._step is None:
            self._step = StepCounts()
        step = self._step
        self._now = time.time()  # vLLM's iteration timestamp: before the batch's processing
        self._engine_ts = engine_ts or 0.0
        get = self._reqs.get
        generated = prompt = 0
        for out in outputs:
            req = get(out.request_id)
            if req is None:
                continue
            n = len(out.new_token_ids)
            generated += n
            req.generation_tokens += n
            if out.events is not None:
                for ev in out.events:
                    if ev.type == self._queued:
                        req.queued_ts = ev.timestamp
                    elif ev.type == self._scheduled:
                        if req.scheduled_ts == 0.0:
                            req.scheduled_ts = ev.timestamp
                    elif ev.type == self._preempted:
                        req.preemptions += 1
                        step.preemptions = (step.preemptions or 0) + 1
            if req.ttft_s is None:  # its first output: the prefill is done
                prefill = getattr(out, "prefill_stats", None)
                if prefill is not None:
                    prompt += prefill.num_prompt_tokens
                req.ttft_s = self._now - req.arrival_unix_s
                req.first_token_ts = self._engine_ts
            if out.finish_reason is not None:
                req.finish_reason = out.finish_reason
        step.generation_tokens = (step.generation_tokens or 0) + generated
        step.prompt_tokens = (step.prompt_tokens or 0) + prompt

    def finished(self, state: Any) -> None:
        """The output processor finished a request of the batch (vLLM's stats count it)."""
        req = self._reqs.pop(getattr(state, "request_id", None), None)
        if req is None or not self.in_batch or self._step is None:
            return
        last_ts = self._engine_ts  # its finishing output is its last
        self._step.finished.append(request_row(
            self.logger.engine_id, getattr(state, "external_req_id", None) or state.request_id,
            self._now, req.finish_reason if req.finish_reason is not None else self._stop,
            e2e_s=self._now - req.arrival_unix_s, ttft_s=req.ttft_s,
            queued_s=_span(req.queued_ts, req.scheduled_ts),
            prefill_s=_span(req.scheduled_ts, req.first_token_ts),
            decode_s=_span(req.first_token_ts, last_ts),
            inference_s=_span(req.scheduled_ts, last_ts),
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
    """Count ``engine``'s outputs for ``logger`` (its output processor's hooks; the caller checked
    ``supported`` before the engine started); False when the engine has no output processor."""
    processor = getattr(engine, "output_processor", None)
    if processor is None:
        return False
    setattr(processor, _ATTR, LeanStats(logger))
    return True


def _hook(method: Any, call: Any) -> Any:
    """``method`` of the output processor, then ``call(lean, first_argument, result)`` when it
    counts outputs (a failure of kvscope's stops its counting, never the engine)."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        lean = getattr(self, _ATTR, None)
        if lean is not None:
            try:
                call(lean, args[0] if args else next(iter(kwargs.values()), None), out)
            except Exception as exc:
                _give_up(self, lean, exc)
        return out

    return wrapper


def wrap_add_request(method: Any) -> Any:
    """``OutputProcessor.add_request``: a request's arrival time."""
    return _hook(method, lambda lean, request, _: lean.added(
        request.request_id, getattr(request, "arrival_time", None)))


def wrap_abort_requests(method: Any) -> Any:
    """``OutputProcessor.abort_requests``: forget the requests it aborted (it returns them)."""
    return _hook(method, lambda lean, _, aborted: lean.aborted(aborted))


def wrap_finish_request(method: Any) -> Any:
    """``OutputProcessor._finish_request``: a finished request's row."""
    return _hook(method, lambda lean, state, _: lean.finished(state))


def wrap_update_scheduler_stats(method: Any) -> Any:
    """``OutputProcessor.update_scheduler_stats``: called once per engine-core step, after its
    outputs were processed (LLMEngine.step, AsyncLLM's output handler)."""
    return _hook(method, lambda lean, scheduler_stats, _: lean.step(scheduler_stats))


def wrap_process_outputs(method: Any) -> Any:
    """``OutputProcessor.process_outputs``: count the batch before vLLM processes it."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, outputs: Any, engine_core_timestamp: Any = None, *args: Any,
                **kwargs: Any) -> Any:
        lean = getattr(self, _ATTR, None)
        if lean is None:
            return method(self, outputs, engine_core_timestamp, *args, **kwargs)
        try:
            lean.before(outputs, engine_core_timestamp)
        except Exception as exc:
            _give_up(self, lean, exc)
        lean.in_batch = True
        try:
            return method(self, outputs, engine_core_timestamp, *args, **kwargs)
        finally:
            lean.in_batch = False

    return wrapper


def _give_up(processor: Any, lean: LeanStats, exc: BaseException) -> None:
    """A surprise in this vLLM's outputs: one error event, then no more counting."""
    setattr(processor, _ATTR, None)
    w = getattr(lean.logger, "writer", None)
    if w is not None:
        w.event("error", f"kvscope could not count vLLM's outputs: {exc!r}", lean.logger.engine_id)


def wanted(user_log_stats: bool) -> bool:
    """True when kvscope should count outputs itself: the program runs with stats off, unless
    ``ENV_COUNT_OUTPUTS`` says otherwise."""
    asked = os.environ.get(ENV_COUNT_OUTPUTS)
    return asked == "1" or (not user_log_stats and asked != "0")
