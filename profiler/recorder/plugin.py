"""vLLM general-plugin entry point: installs kvscope's hooks in whichever vLLM process loads it.

vLLM loads ``vllm.general_plugins`` in the frontend, the engine core and every worker. When
KVSCOPE_SESSION is set, ``install`` wraps a few vLLM methods (names checked with getattr, so
0.20–0.33 all work): engine construction in the frontend (adds the stat logger), KV-cache start-up
and the busy loop in the engine core, device/memory/execute methods in workers. Wrappers only
observe: they call the original, record, and re-raise whatever the original raised.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from profiler.recorder import context, prompt_blocks
from profiler.recorder.failures import observe_failures, record_failure

_suppress_default_loggers = threading.local()


SUPPORTED_VLLM = ((0, 20), (0, 33))
"""Oldest and newest vLLM minor releases whose internals kvscope's hooks know (both included)."""

_ENV_UNSUPPORTED_SAID = "KVSCOPE_UNSUPPORTED_VLLM_SAID"


def unsupported_vllm(version: str | None) -> str | None:
    """Why kvscope cannot record this vLLM version (None when it can)."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    lo, hi = SUPPORTED_VLLM
    if m is None:
        return f"vLLM version {version!r} is unknown to kvscope"
    if not lo <= (int(m[1]), int(m[2])) <= hi:
        return (f"vLLM {version} is not supported by this kvscope (it knows {lo[0]}.{lo[1]} to "
                f"{hi[0]}.{hi[1]}); recording is off")
    return None


def install() -> None:
    """Entry point (``vllm.general_plugins``): patch what this process has, when recording is on."""
    if context.session_path() is None:
        return
    reason = unsupported_vllm(getattr(sys.modules.get("vllm"), "__version__", None))
    if reason is not None:
        # One line for the whole process tree (children inherit the variable), and an event.
        if not os.environ.get(_ENV_UNSUPPORTED_SAID):
            os.environ[_ENV_UNSUPPORTED_SAID] = "1"
            print(f"kvscope: {reason}", file=sys.stderr, flush=True)
            w = context.writer()
            if w is not None:
                w.event("error", reason, kind_detail="unsupported_vllm")
        return
    try:
        _patch_frontend()
        _patch_engine_core()
        _patch_worker_resolution()
    except Exception as exc:  # a recorder bug must never stop the engine
        w = context.writer()
        if w is not None:
            w.event("error", f"kvscope could not install its vLLM hooks: {exc!r}")


def _patch(cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = getattr(cls, name, None)
    if original is None or getattr(original, "__kvscope__", False):
        return
    wrapped = make(original)
    wrapped.__kvscope__ = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapped)


# --- frontend -------------------------------------------------------------------------------


def _called_from_engine_args() -> bool:
    """True when vLLM loads plugins from ``vllm/engine/arg_utils.py`` (EngineArgs construction or
    CLI parsing): this process is about to build an engine (a frontend), not an engine core or a
    worker, which load plugins from their own start-up code."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith("vllm/engine/arg_utils.py"):
            return True
        frame = frame.f_back
    return False


def _patch_frontend() -> None:
    if _called_from_engine_args():
        # `vllm serve` imports AsyncLLM only after the config is built: import it now, so the class
        # it constructs is the patched one.
        import importlib

        for name in ("vllm.v1.engine.async_llm", "vllm.v1.engine.llm_engine"):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    llm_engine = sys.modules.get("vllm.v1.engine.llm_engine")
    async_llm = sys.modules.get("vllm.v1.engine.async_llm")
    if llm_engine is None and async_llm is None:
        return
    if llm_engine is not None:
        _patch(llm_engine.LLMEngine, "__init__", _wrap_engine_init)
    if async_llm is not None:
        _patch(async_llm.AsyncLLM, "__init__", _wrap_engine_init)
    from vllm.v1.metrics import loggers, stats

    _patch(loggers.StatLoggerManager, "__init__", _wrap_logger_manager_init)
    _patch(stats.IterationStats, "update_from_finished_request", _wrap_finished_request)
    output_processor = sys.modules.get("vllm.v1.engine.output_processor")
    if output_processor is not None:
        from profiler.recorder import lean_stats

        _patch(output_processor.OutputProcessor, "add_request",
               lambda f: lean_stats.wrap_add_request(_wrap_add_request(f)))
        for name, wrap in (("process_outputs", lean_stats.wrap_process_outputs),
                           ("update_scheduler_stats", lean_stats.wrap_update_scheduler_stats),
                           ("_finish_request", lean_stats.wrap_finish_request),
                           ("abort_requests", lean_stats.wrap_abort_requests)):
            _patch(output_processor.OutputProcessor, name, wrap)
        # AsyncLLM's output handler hands every error after start-up (EngineDeadError when an
        # engine core dies) to propagate_error before the requests fail with it
        _patch(output_processor.OutputProcessor, "propagate_error", _wrap_propagate_error)
    if llm_engine is not None:
        _patch(llm_engine.LLMEngine, "step", lambda f: observe_failures(f, "frontend: step"))
    core_client = sys.modules.get("vllm.v1.engine.core_client")
    if core_client is not None:
        for name in ("DPAsyncMPClient", "DPLBAsyncMPClient"):
            cls = getattr(core_client, name, None)
            if cls is not None and "get_core_engine_for_request" in vars(cls):
                _patch(cls, "get_core_engine_for_request", _wrap_engine_choice)


def _wrap_engine_init(init: Callable[..., Any]) -> Callable[..., Any]:
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if context.session_path() is None:
            return init(self, *args, **kwargs)
        context.claim_owner()
        context.register_process("frontend")
        _record_vllm_version()
        bound = sig.bind(self, *args, **kwargs)
        user_log_stats = bound.arguments.get("log_stats", True)
        vllm_config = bound.arguments.get("vllm_config")
        # stats off: kvscope counts the outputs itself (lean_stats), only the engine core's stats on
        from profiler.recorder import lean_stats

        lean = lean_stats.wanted(user_log_stats) and _lean_possible(vllm_config)
        if "log_stats" in sig.parameters and not lean:
            bound.arguments["log_stats"] = True
        if "stat_loggers" in sig.parameters and not lean:
            from profiler.recorder.stat_logger import KvscopeStatLogger

            loggers = list(bound.arguments.get("stat_loggers") or [])
            loggers.append(KvscopeStatLogger)
            bound.arguments["stat_loggers"] = loggers
        w = context.writer()
        if vllm_config is not None and w is not None:
            from profiler.recorder import options
            from profiler.recorder.stat_logger import insert_pending_engine

            options.apply(vllm_config)
            insert_pending_engine(w, vllm_config)
        # The user turned stats off: keep vLLM's own periodic log lines off too.
        _suppress_default_loggers.on = not user_log_stats
        from profiler.recorder.options import ENV_CORE_STATS

        core_stats_before = os.environ.get(ENV_CORE_STATS)
        if lean:
            os.environ[ENV_CORE_STATS] = "1"  # the engine core it starts reads it
        try:
            init(*bound.args, **bound.kwargs)
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                record_failure(exc, "frontend: engine start-up")
            raise
        finally:
            _suppress_default_loggers.on = False
            if core_stats_before is None:
                os.environ.pop(ENV_CORE_STATS, None)
            else:
                os.environ[ENV_CORE_STATS] = core_stats_before
        if lean and vllm_config is not None:
            _count_outputs(self, vllm_config)

    return __init__


def _lean_possible(vllm_config: Any) -> bool:
    """True when kvscope can count this engine's outputs itself: one engine behind the frontend
    (data parallelism keeps vLLM's per-engine stats path) and an output processor it knows."""
    from profiler.recorder import lean_stats
    from profiler.recorder.stat_logger import data_parallel

    processor = sys.modules.get("vllm.v1.engine.output_processor")
    return (vllm_config is not None and not data_parallel(vllm_config) and processor is not None
            and lean_stats.supported(processor.OutputProcessor))


def _count_outputs(engine: Any, vllm_config: Any) -> None:
    """The stat logger vLLM would have created, fed by kvscope's own output counts."""
    from profiler.recorder import lean_stats
    from profiler.recorder.stat_logger import KvscopeStatLogger

    logger = KvscopeStatLogger(vllm_config, 0)
    logger.step_counts = "kvscope"
    logger.log_engine_initialized()
    if not lean_stats.attach(engine, logger) and logger.writer is not None:
        logger.writer.event("error", "kvscope cannot count this engine's outputs (it has no "
                            "output processor): no step rows",
                            logger.engine_id)


def _record_vllm_version() -> None:
    """Keep vLLM's version in the session even when no engine ever starts."""
    w = context.writer()
    version = getattr(sys.modules.get("vllm"), "__version__", None)
    if w is not None and version is not None:
        w.set_meta_default(vllm_version=str(version))


def _wrap_logger_manager_init(init: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        suppress = getattr(_suppress_default_loggers, "on", False)
        if suppress and "enable_default_loggers" in kwargs:
            kwargs["enable_default_loggers"] = False
        init(self, *args, **kwargs)
        if suppress:
            # vLLM always adds its Prometheus logger when stats are on; the program had them off,
            # so nobody reads it, and its per-step histogram work is the bulk of stats overhead.
            loggers = getattr(self, "stat_loggers", None)
            if isinstance(loggers, list):
                self.stat_loggers = [
                    lg for lg in loggers if type(lg).__name__ != "PrometheusStatLogger"
                ]

    return __init__


def _wrap_finished_request(method: Callable[..., Any]) -> Callable[..., Any]:
    """Keep each finished request's TTFT (frontend-measured) next to the iteration's stats."""
    sig = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        try:
            a = sig.bind(self, *args, **kwargs).arguments
            ttft = getattr(a.get("req_stats"), "first_token_latency", None)
            rid = a.get("request_id")
            if ttft is not None and rid is not None:
                if not hasattr(self, "_kvscope_ttft_s"):
                    self._kvscope_ttft_s = {}
                self._kvscope_ttft_s[rid] = ttft
        except Exception:
            pass
        return out

    return wrapper


def _wrap_add_request(method: Callable[..., Any]) -> Callable[..., Any]:
    """Store the content hashes of each new request's full prompt blocks (for what-if)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, request, *args, **kwargs)
        try:
            prompt_blocks.record_prompt_blocks(request)
        except Exception:
            pass
        return out

    return wrapper


def _wrap_propagate_error(method: Callable[..., Any]) -> Callable[..., Any]:
    """Record the error the output handler is about to hand to every request (once)."""

    @functools.wraps(method)
    def wrapper(self: Any, exc: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(exc, BaseException):
            try:
                record_failure(exc, "frontend: output handler")
            except Exception:
                pass
        return method(self, exc, *args, **kwargs)

    return wrapper


def _wrap_engine_choice(method: Callable[..., Any]) -> Callable[..., Any]:
    """Data parallel: hash each request's prompt blocks for the engine the balancer chose."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        engine = method(self, request, *args, **kwargs)
        try:
            if prompt_blocks.many_engines() and isinstance(engine, bytes | bytearray):
                prompt_blocks.record_prompt_blocks(request, int.from_bytes(engine, "little"))
        except Exception:
            pass
        return engine

    return wrapper


# --- engine core ----------------------------------------------------------------------------


def _patch_engine_core() -> None:
    core = sys.modules.get("vllm.v1.engine.core")
    if core is None:
        return
    _patch(core.EngineCore, "_initialize_kv_caches", _wrap_initialize_kv_caches)
    from profiler.recorder import engine_core

    with contextlib.suppress(ImportError):
        from vllm.v1.core.sched import scheduler

        from profiler.recorder import kv_groups

        # one wrapper for both: per-group blocks (hybrid models) and token occupancy
        _patch(scheduler.Scheduler, "make_stats",
               lambda f: engine_core.wrap_make_stats(kv_groups.wrap_make_stats(f)))
    engine_core.install(_patch)
    from profiler.recorder import ray_shards

    ray_shards.patch_executor(_patch, context.writer, core.EngineCore)
    _patch(core.EngineCore, "reset_prefix_cache", _wrap_reset_prefix_cache)
    _patch(core.EngineCore, "shutdown", _wrap_core_shutdown)
    proc = getattr(core, "EngineCoreProc", None)
    if proc is None:
        return
    # every busy loop: EngineCoreProc's and the data-parallel ones that override it
    # (DPEngineCoreProc, ...), each wrapped where it is defined; an override names its class
    for cls in [proc, *_subclasses(proc)]:
        if "run_busy_loop" in vars(cls):
            where = "engine core: busy loop" + ("" if cls is proc else f" ({cls.__name__})")
            _patch(cls, "run_busy_loop", lambda f, where=where: observe_failures(f, where))


def _wrap_core_shutdown(method: Callable[..., Any]) -> Callable[..., Any]:
    """Commit the engine core's queued rows when it shuts down: its process then ends through
    multiprocessing's ``os._exit``, which runs no ``atexit`` hook (vLLM 0.26 on an H200 lost the
    last 0.2 s of a hybrid model's ``kv_group_usage`` samples that way)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            w = context.writer()
            if w is not None:
                w.flush()

    return wrapper


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _wrap_initialize_kv_caches(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        from profiler.recorder import options

        if options.core_stats_forced():
            # the frontend counts outputs itself (lean_stats): this core's stats go on before its
            # scheduler is built from ``self.log_stats`` (plugins load inside EngineCore.__init__,
            # too late to change its argument)
            self.log_stats = True
        dp_rank = _dp_rank(self)
        context.set_dp_rank(dp_rank)
        context.register_process("engine_core", rank=dp_rank)
        w = context.writer()
        if w is not None and _headless_core(self):
            # no frontend on this node: the engine core describes its own engine
            from profiler.recorder.stat_logger import insert_headless_engine

            try:
                insert_headless_engine(w, getattr(self, "vllm_config", None), dp_rank)
            except Exception as exc:  # noqa: BLE001 (never into the engine)
                w.event("error", f"kvscope could not describe a headless engine: {exc!r}")
        try:
            config = method(self, *args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                record_failure(exc, "engine core: KV cache initialisation")
            raise
        _record_kv_cache_config(config)
        return config

    return wrapper


def _headless_core(core: Any) -> bool:
    """Whether the engine core ``core`` serves no frontend of its own node (``vllm serve --headless``
    of multi-node data parallelism): vLLM passes ``EngineCoreProc.__init__`` ``local_client=False``
    (0.26 to 0.32) and keeps no attribute of it, so it is read from that call's frame, which is
    still running (this hook runs inside it). False when the frame is not found."""
    frame = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        if frame.f_code.co_name == "__init__" and local.get("self") is core and "local_client" in local:
            return local["local_client"] is False
        frame = frame.f_back
    return False


def _dp_rank(obj: Any) -> int:
    """The data-parallel rank of the engine core or worker ``obj`` (0 without data parallelism):
    vLLM's engine index of that engine in the frontend.

    An engine core knows its ``engine_index``; a worker reads its config's
    ``data_parallel_index`` (vLLM 0.32 resets ``data_parallel_rank`` to 0 in each rank of a
    dense model's DP, whose ranks run as independent engines), else ``data_parallel_rank``."""
    index = getattr(obj, "engine_index", None)
    if isinstance(index, int) and index >= 0:
        return index
    par = getattr(getattr(obj, "vllm_config", None), "parallel_config", None)
    for name in ("data_parallel_index", "data_parallel_rank"):
        rank = getattr(par, name, None)
        if isinstance(rank, int) and rank >= 0:
            return rank
    return 0


def _record_kv_cache_config(config: Any) -> None:
    """Store the KV cache the engine core allocated: blocks and bytes per block (per worker)."""
    w = context.writer()
    blocks = getattr(config, "num_blocks", None)
    tensors = getattr(config, "kv_cache_tensors", None)
    if w is None or not isinstance(blocks, int) or tensors is None:
        return
    from profiler.recorder import kv_groups

    try:
        kv_groups.record_groups(config)
    except Exception as exc:
        w.event("error", f"kvscope could not read the KV-cache groups: {exc!r}")
    try:
        total_bytes = sum(int(t.size) for t in tensors)
    except Exception:
        return
    per_block = total_bytes // blocks if blocks else None
    w.event("kv_cache_config", f"KV cache: {blocks} blocks, {per_block} bytes per block per worker",
            num_blocks=blocks, kv_cache_bytes=total_bytes, bytes_per_block=per_block)


def _wrap_reset_prefix_cache(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, *args, **kwargs)
        w = context.writer()
        if w is not None:
            w.event("prefix_cache_reset", "prefix cache reset requested", result=str(out))
        return out

    return wrapper


# --- workers --------------------------------------------------------------------------------

_WORKER_METHODS = {
    "load_model": "worker: load_model",
    "compile_or_warm_up_model": "worker: compile/warm-up (CUDA graphs)",
    "initialize_from_config": "worker: KV cache allocation",
    "execute_model": "worker: execute_model",
    "sample_tokens": "worker: sample_tokens",
}


def _patch_worker_resolution() -> None:
    """Wrap the worker class when vLLM resolves it by name (only worker processes do that)."""
    worker_base = sys.modules.get("vllm.v1.worker.worker_base")
    if worker_base is None or not hasattr(worker_base, "resolve_obj_by_qualname"):
        return
    resolve = worker_base.resolve_obj_by_qualname
    if getattr(resolve, "__kvscope__", False):
        return

    @functools.wraps(resolve)
    def resolve_and_patch(qualname: str) -> Any:
        obj = resolve(qualname)
        if isinstance(obj, type) and hasattr(obj, "determine_available_memory"):
            patch_worker_class(obj)
        return obj

    resolve_and_patch.__kvscope__ = True  # type: ignore[attr-defined]
    worker_base.resolve_obj_by_qualname = resolve_and_patch


def patch_worker_class(cls: type) -> None:
    """Wrap a worker class: role + allocator sampler at init_device, start-up memory, failures."""
    from profiler.recorder import spec_decode, startup_memory

    for name, where in _WORKER_METHODS.items():
        if name == "load_model":  # also measures the drafter once the weights are in
            _patch(cls, name, lambda f, where=where: spec_decode.wrap_load_model(
                observe_failures(f, where)))
            continue
        _patch(cls, name, lambda f, where=where: observe_failures(f, where))
    _patch(cls, "init_device", _wrap_init_device)
    _patch(cls, "determine_available_memory", startup_memory.wrap_determine_available_memory)
    startup_memory.capture_profiling_results()


def _wrap_init_device(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            out = method(self, *args, **kwargs)
        except BaseException as exc:
            record_failure(exc, "worker: init_device")
            raise
        w = context.writer()
        if w is not None:
            context.set_dp_rank(_dp_rank(self))
            context.register_process("worker", rank=getattr(self, "rank", None))
            _record_node(w, self)
            from profiler.recorder.allocator import start_allocator_sampler

            start_allocator_sampler(w, context.interval_s(context.ENV_ALLOCATOR_INTERVAL_MS))
        return out

    return wrapper


def _record_node(w: Any, worker: Any) -> None:
    """Multi-node engines: which node this worker's shard is (``node_rank`` of ``nnodes``, vLLM's
    multiprocessing launch); a Ray worker recording a shard on another node samples that node's
    GPUs from its local rank 0 (the driver's sampler sees only its own host)."""
    par = getattr(getattr(worker, "vllm_config", None), "parallel_config", None)
    nnodes, rank = getattr(par, "nnodes", None), getattr(par, "node_rank", None)
    if isinstance(nnodes, int) and isinstance(rank, int) and nnodes > 1:
        w.set_meta(node_rank=rank, nnodes=nnodes)
    from profiler.recorder import ray_shards

    if ray_shards.local_shard(w.path) is not None and getattr(worker, "local_rank", None) == 0:
        from profiler.recorder.nvml import start_nvml_sampler

        start_nvml_sampler(w, context.interval_s(context.ENV_NVML_INTERVAL_MS))
