"""Speculative decoding: the engine's per-step draft/accept counts, its method, the drafter's weights.

vLLM puts a ``SpecDecodingStats`` on the step's ``SchedulerStats`` (``spec_decoding_stats``) when
speculative decoding is on: drafts proposed this step, draft tokens, accepted tokens and accepted
tokens per draft position. kvscope stores them as one ``spec_decode_steps`` row per step that has
them. The method comes from the frontend's ``speculative_config`` (a ``spec_decode_config`` event);
the drafter's weights are counted in each worker after ``load_model`` (a ``drafter_loaded`` event):
the bytes of the drafter's parameters that it does not share with the target model (EAGLE heads
share the embedding and LM head; n-gram and suffix drafters hold none).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from profiler.recorder import context
from profiler.session.rows import SpecDecodeStepRow

MODEL_FREE_METHODS = frozenset({"ngram", "ngram_gpu", "suffix"})
"""Drafting methods without a draft model (they look tokens up in the prompt and output)."""


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def step_row(engine_id: int | None, t_unix_s: float, stats: Any) -> SpecDecodeStepRow | None:
    """The ``spec_decode_steps`` row of one step's ``SpecDecodingStats`` (None when it has none)."""
    if stats is None:
        return None
    per_pos = getattr(stats, "num_accepted_tokens_per_pos", None)
    per_pos_json = None
    if isinstance(per_pos, (list, tuple)) and all(_int(v) is not None for v in per_pos):
        per_pos_json = json.dumps([int(v) for v in per_pos])
    return SpecDecodeStepRow(
        engine_id=engine_id, t_unix_s=t_unix_s,
        drafts=_int(getattr(stats, "num_drafts", None)),
        draft_tokens=_int(getattr(stats, "num_draft_tokens", None)),
        accepted_tokens=_int(getattr(stats, "num_accepted_tokens", None)),
        accepted_per_pos=per_pos_json,
    )


def config_details(vllm_config: Any) -> dict[str, Any] | None:
    """Method, draft length and draft model of the engine's speculative decoding (None: off)."""
    spec = getattr(vllm_config, "speculative_config", None)
    if spec is None:
        return None
    method = getattr(spec, "method", None)
    draft = getattr(getattr(spec, "draft_model_config", None), "model", None) or getattr(spec, "model", None)
    if str(method) in MODEL_FREE_METHODS:  # vLLM fills ``model`` with the target's name here
        draft = None
    return {
        "method": None if method is None else str(method),
        "num_speculative_tokens": _int(getattr(spec, "num_speculative_tokens", None)),
        "draft_model": None if draft is None else str(draft),
    }


def record_config(writer: Any, vllm_config: Any, engine_id: int | None) -> None:
    """A ``spec_decode_config`` event when the engine speculates."""
    details = config_details(vllm_config)
    if details is None:
        return
    writer.event("spec_decode_config",
                 f"speculative decoding: {details['method']}, "
                 f"{details['num_speculative_tokens']} tokens per draft", engine_id, **details)


def drafter_of(runner: Any) -> Any:
    """The runner's drafter: ``drafter`` on vLLM's GPU model runner (V1) and CPU runner,
    ``speculator`` on the V2 GPU model runner (``vllm/v1/worker/gpu/model_runner.py``, vLLM's
    default for dense models from 0.2x on). None: the engine does not speculate."""
    drafter = getattr(runner, "drafter", None)
    return drafter if drafter is not None else getattr(runner, "speculator", None)


def drafter_weights_bytes(runner: Any) -> int | None:
    """Bytes of the drafter's own parameters (not shared with the target model); None: no drafter."""
    drafter = drafter_of(runner)
    if drafter is None:
        return None
    model = getattr(drafter, "model", None)
    params = getattr(model, "parameters", None)
    if not callable(params):
        return 0  # n-gram / suffix drafters: no model, no weights
    target = getattr(runner, "model", None)
    shared: set[int] = set()
    if callable(getattr(target, "parameters", None)):
        shared = {p.data_ptr() for p in target.parameters()}
    seen: set[int] = set()
    total = 0
    for p in params():
        ptr = p.data_ptr()
        if ptr in shared or ptr in seen:
            continue
        seen.add(ptr)
        total += p.numel() * p.element_size()
    return total


def wrap_load_model(method: Callable[..., Any]) -> Callable[..., Any]:
    """Worker ``load_model`` wrapper: after the weights are in, a ``drafter_loaded`` event."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        w = context.writer()
        if w is not None:
            try:
                runner = getattr(self, "model_runner", None)
                n_bytes = drafter_weights_bytes(runner)
                if n_bytes is not None:
                    drafter = type(drafter_of(runner)).__name__
                    w.event("drafter_loaded", f"drafter {drafter}: {n_bytes} bytes of own weights",
                            drafter=drafter, drafter_weights_bytes=n_bytes,
                            rank=getattr(self, "rank", None))
            except Exception as exc:
                w.event("error", f"kvscope could not measure the drafter's weights: {exc!r}")
        return out

    return wrapper
