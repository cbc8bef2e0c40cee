"""Simulate a setting before re-running: the session's own requests replayed through a model of
vLLM's scheduler at another KV cache size, ``max_num_seqs`` or ``gpu_memory_utilization``.

The demand is the session's: each finished request's arrival, prompt and output length and the
chained hashes of its prompt blocks (``prompt_blocks``). The model is vLLM V1's scheduler in
outline: running requests first (a decode token each, or the next prefill chunk), then waiting
ones in arrival order while ``max_num_seqs``, the token budget (``max_num_batched_tokens``) and the
free blocks allow; a running request that needs a block when none is free preempts the most
recently admitted one, which frees all its blocks and recomputes later. Full prompt blocks are
shared by hash and stay cached (LRU) after their requests finish, so later requests hit them.
Step time is fitted from the session's own steps (a fixed cost plus a cost per scheduled token).

The prefix hit rate at another size comes from ``profiler.analysis.whatif`` (one LRU stack-distance
pass, validated against re-runs); preemptions and queueing come from this model. ``calibrate``
runs the model at the recorded settings so a page can put its error beside every prediction.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from profiler.analysis import whatif
from profiler.analysis.kv_size import blocks_at_utilization, bytes_per_block
from profiler.errors import NotAnalysable
from profiler.session.reader import Session
from profiler.units import finite_or_none, is_number, percentile

NULL_BLOCKS = 1
"""Blocks of the pool vLLM never hands out (the null block)."""
MAX_STEPS = 2_000_000
"""The simulation stops (and says so) after this many steps."""
_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


@dataclass(frozen=True)
class SimRequest:
    """One request of the session's demand."""

    request_id: str
    t_arrival_s: float
    """Seconds from session start."""
    prompt_tokens: int
    output_tokens: int
    hashes: tuple[int, ...]
    """Chained hashes of the prompt's full blocks (empty when not recorded)."""


@dataclass(frozen=True)
class Settings:
    """The scheduler settings a simulation runs with."""

    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int


@dataclass(frozen=True)
class Demand:
    """A session's requests and what its steps cost, for one engine."""

    engine_id: int
    block_size: int
    requests: list[SimRequest]
    step_base_s: float
    """Fitted cost of a step regardless of its tokens."""
    step_per_token_s: float
    """Fitted cost per token a step schedules."""
    recorded: Settings
    step_per_seq_s: float = 0.0
    """Fitted cost per request in the step's batch."""
    fitted_max_batch: int = 0
    """The largest batch the fit saw: step times for larger batches are extrapolated."""
    startup: dict[str, Any] = field(default_factory=dict)
    """The first worker's start-up profile (to turn gpu_memory_utilization into blocks)."""
    bytes_per_block: float | None = None
    gpu_memory_utilization: float | None = None

    def step_s(self, tokens: int, batch: int = 0) -> float:
        """Predicted length of a step that schedules ``tokens`` tokens for ``batch`` requests."""
        return self.step_base_s + self.step_per_token_s * tokens + self.step_per_seq_s * batch


@dataclass(frozen=True)
class Prediction:
    """What the model predicts at ``settings``."""

    settings: Settings
    preemptions: int
    preempted_requests: int
    queued_p50_s: float | None
    queued_p95_s: float | None
    ttft_p50_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    peak_kv_usage_frac: float
    steps: int
    finished: int
    """Requests the simulation finished (all of them unless ``MAX_STEPS`` stopped it)."""
    span_s: float
    """From the first arrival to the last finish."""
    prefix_hit_rate: float | None
    """From the what-if curve at ``settings.num_blocks`` (None without prompt-block hashes)."""
    model_hit_rate: float | None
    """The simulation's own prefix hits / queried tokens (a cross-check of the curve)."""
    complete: bool = True
    max_batch: int = 0
    """The largest batch a simulated step ran (beyond the fit's, times are extrapolated)."""


class _Req:
    __slots__ = ("src", "computed", "generated", "held", "own_hashes", "prefill_left", "first_sched_s",
                 "first_token_s", "preemptions", "order", "finish_s", "matched")

    def __init__(self, src: SimRequest) -> None:
        self.src = src
        self.generated = 0
        self.preemptions = 0
        self.first_sched_s: float | None = None
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.order = 0
        self.reset()

    def reset(self) -> None:
        self.computed = 0
        self.held = 0
        self.own_hashes: list[int] = []  # hashes this request holds a reference to, prompt order
        self.prefill_left = self.src.prompt_tokens + self.generated
        self.matched = False


class _Pool:
    """Blocks in use (private + referenced hashes) and the LRU of cached, unreferenced hashes."""

    def __init__(self, usable: int, block_size: int) -> None:
        self.usable = usable
        self.bs = block_size
        self.private = 0
        self.refs: dict[int, int] = {}
        self.cached: OrderedDict[int, None] = OrderedDict()

    @property
    def in_use(self) -> int:
        return self.private + len(self.refs)

    def free(self) -> int:
        return self.usable - self.in_use

    def _fit(self) -> None:
        while self.cached and self.in_use + len(self.cached) > self.usable:
            self.cached.popitem(last=False)

    def take(self, n: int) -> None:
        self.private += n
        self._fit()

    def ref(self, h: int) -> None:
        if h in self.refs:
            self.refs[h] += 1
        else:
            self.cached.pop(h, None)
            self.refs[h] = 1
            self._fit()

    def promote(self, h: int) -> bool:
        """A private block just filled with prompt block ``h``: share it under its hash."""
        if h in self.refs:
            return False  # computed twice at once: this copy stays private
        self.cached.pop(h, None)
        self.private -= 1
        self.refs[h] = 1
        return True

    def release(self, r: _Req, tail_id: int) -> int:
        """Free ``r``'s blocks: its other full blocks (generated tokens, unshared prompt blocks) stay
        cached under ids nobody asks for, then its shared prompt blocks last to first, as vLLM frees
        them; the partly filled block is free at once. Returns the next unused tail id."""
        private = r.held - len(r.own_hashes)
        full_private = min(max(r.computed // self.bs - len(r.own_hashes), 0), private)
        self.private -= private
        for _ in range(full_private):
            self.cached[-(tail_id + 1)] = None
            tail_id += 1
        for h in reversed(r.own_hashes):
            n = self.refs.get(h, 0) - 1
            if n <= 0:
                self.refs.pop(h, None)
                self.cached[h] = None
                self.cached.move_to_end(h)
            else:
                self.refs[h] = n
        self._fit()
        r.held = 0
        r.own_hashes = []
        return tail_id


def _blocks_for(tokens: int, bs: int) -> int:
    return -(-tokens // bs)


def run(demand: Demand, settings: Settings, curve: whatif.MissRatioCurve | None = None) -> Prediction:
    """Replay ``demand`` through the scheduler model at ``settings``."""
    bs = demand.block_size
    pool = _Pool(max(settings.num_blocks - NULL_BLOCKS, 1), bs)
    pending = deque(sorted(demand.requests, key=lambda r: r.t_arrival_s))
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    done: list[_Req] = []
    t = pending[0].t_arrival_s if pending else 0.0
    steps = preemptions = tail_id = order = max_batch = 0
    hits = queried = 0
    peak = 0.0
    budget_max = max(settings.max_num_batched_tokens, 1)
    while (pending or waiting or running) and steps < MAX_STEPS:
        while pending and pending[0].t_arrival_s <= t:
            waiting.append(_Req(pending.popleft()))
        if not running and not waiting:
            t = pending[0].t_arrival_s
            continue
        budget = budget_max
        scheduled: list[tuple[_Req, int]] = []
        preempted_now = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            want = min(r.prefill_left, budget) if r.prefill_left > 0 else 1
            need = _blocks_for(r.computed + want, bs) - r.held
            while need > pool.free() and running:
                victim = running.pop()
                tail_id = pool.release(victim, tail_id)
                victim.preemptions += 1
                victim.reset()
                waiting.appendleft(victim)
                preemptions += 1
                preempted_now = True
                if victim is r:
                    break
            if i >= len(running) or running[i] is not r:
                break
            pool.take(need)
            r.held += need
            scheduled.append((r, want))
            budget -= want
            i += 1
        if not preempted_now:
            while waiting and len(running) < settings.max_num_seqs and budget > 0:
                r = waiting[0]
                if not r.matched:
                    r.matched = True
                    limit = max(r.src.prompt_tokens - 1, 0) // bs
                    n_hit = 0
                    for h in r.src.hashes[:limit]:
                        if h in pool.refs or h in pool.cached:
                            n_hit += 1
                        else:
                            break
                    if r.generated == 0:
                        queried += r.src.prompt_tokens
                        hits += n_hit * bs
                    for h in r.src.hashes[:n_hit]:
                        pool.ref(h)
                    r.own_hashes = list(r.src.hashes[:n_hit])
                    r.held = n_hit
                    r.computed = n_hit * bs
                    r.prefill_left -= n_hit * bs
                want = min(r.prefill_left, budget)
                need = _blocks_for(r.computed + want, bs) - r.held
                if need > pool.free():
                    break
                waiting.popleft()
                pool.take(need)
                r.held += need
                order += 1
                r.order = order
                if r.first_sched_s is None:
                    r.first_sched_s = t
                running.append(r)
                scheduled.append((r, want))
                budget -= want
        tokens = sum(w for _, w in scheduled)
        if not scheduled:  # nothing fits: a request larger than the cache cannot run at all
            break
        dt = demand.step_s(tokens, len(scheduled))
        max_batch = max(max_batch, len(scheduled))
        steps += 1
        t += dt
        finished: list[_Req] = []
        for r, want in scheduled:
            before = r.computed
            r.computed += want
            if r.prefill_left > 0:
                r.prefill_left -= want
                # prompt blocks that just filled become shareable under their hash
                n_hashed = len(r.src.hashes)
                for j in range(before // bs, min(r.computed // bs, n_hashed)):
                    h = r.src.hashes[j]
                    if j >= len(r.own_hashes) and pool.promote(h):
                        r.own_hashes.append(h)
                if r.prefill_left > 0:
                    continue
            r.generated += 1
            if r.first_token_s is None:
                r.first_token_s = t
            if r.generated >= max(r.src.output_tokens, 1):
                finished.append(r)
        for r in finished:
            running.remove(r)
            tail_id = pool.release(r, tail_id)
            r.finish_s = t
            done.append(r)
        peak = max(peak, pool.in_use / max(settings.num_blocks - NULL_BLOCKS, 1))
    q = [r.first_sched_s - r.src.t_arrival_s for r in done if r.first_sched_s is not None]
    ttft = [r.first_token_s - r.src.t_arrival_s for r in done if r.first_token_s is not None]
    e2e = [r.finish_s - r.src.t_arrival_s for r in done if r.finish_s is not None]
    first = min((r.t_arrival_s for r in demand.requests), default=0.0)
    last = max((r.finish_s for r in done if r.finish_s is not None), default=first)
    complete = len(done) == len(demand.requests)
    return Prediction(
        settings, preemptions, sum(1 for r in done if r.preemptions > 0), percentile(q, 0.5),
        percentile(q, 0.95), percentile(ttft, 0.5), percentile(e2e, 0.5), percentile(e2e, 0.95),
        min(peak, 1.0), steps, len(done), last - first,
        curve.hit_rate(settings.num_blocks) if curve is not None else None,
        hits / queried if queried else None, complete, max_batch)


def _fit_steps(session: Session, engine_id: int) -> tuple[float, float, float, int]:
    """(base, per-token, per-running-request) step cost in seconds, fitted by least squares on the
    session's busy steps, and the largest batch it saw (the fit holds up to about that)."""
    rows = session.rows(
        "SELECT t_unix_s, COALESCE(prompt_tokens, 0) + COALESCE(generation_tokens, 0), running "
        "FROM steps WHERE engine_id = ? AND running IS NOT NULL ORDER BY t_unix_s", (engine_id,))
    if len(rows) < 3:
        raise NotAnalysable(f"engine {engine_id}: fewer than 3 steps, no step time to simulate with")
    a = np.asarray([(r[0], r[1], r[2] or 0) for r in rows if is_number(r[0])], dtype=float)
    dt = np.diff(a[:, 0])
    tokens, running = a[:-1, 1], a[:-1, 2]
    busy = running > 0
    dt, tokens, running = dt[busy], tokens[busy], running[busy]
    if dt.size < 2:
        raise NotAnalysable(f"engine {engine_id}: no busy steps, no step time to simulate with")
    keep = dt <= 10 * np.median(dt)  # pauses between bursts are not step cost
    dt, tokens, running = dt[keep], tokens[keep], running[keep]
    x = np.column_stack([np.ones_like(tokens), tokens, running])
    coef, *_ = np.linalg.lstsq(x, dt, rcond=None)
    if (coef < 0).any():  # a negative cost is noise: refit without that term
        x = x[:, coef >= 0]
        sub, *_ = np.linalg.lstsq(x, dt, rcond=None)
        full = np.zeros(3)
        full[np.flatnonzero(coef >= 0)] = np.maximum(sub, 0.0)
        coef = full
    base = float(coef[0]) if coef[0] > 0 else float(np.median(dt))
    return max(base, 1e-6), float(coef[1]), float(coef[2]), int(running.max())


def _engine(session: Session, engine_id: int | None) -> dict[str, Any]:
    engines = session.table("engines")
    if engines.empty:
        raise NotAnalysable("no vLLM engine in this session: nothing to simulate")
    if engine_id is not None:
        engines = engines[engines["engine_id"] == engine_id]
        if engines.empty:
            raise NotAnalysable(f"no engine {engine_id} in this session")
    return {k: finite_or_none(v) for k, v in engines.iloc[0].to_dict().items()}


def load_demand(session: Session, engine_id: int | None = None) -> Demand:
    """The session's demand for one engine (default: the first); NotAnalysable when the session
    has no finished requests, block size or cache size to simulate from."""
    eng = _engine(session, engine_id)
    eid = int(eng["engine_id"])
    bs, blocks = eng.get("block_size"), eng.get("num_gpu_blocks")
    if not bs or not blocks:
        raise NotAnalysable("the engine's block size or cache size was not recorded")
    reqs = session.table("requests", "WHERE engine_id = ?", (eid,)).dropna(
        subset=["t_finished_unix_s", "e2e_s", "prompt_tokens", "generation_tokens"])
    if reqs.empty:
        raise NotAnalysable("no finished requests with their token counts: no demand to replay")
    start, _ = session.bounds()
    t0 = float(start or 0.0)
    blocks_df = session.table("prompt_blocks", "WHERE engine_id = ?", (eid,))
    hashes: dict[str, tuple[int, ...]] = {}
    added: dict[str, float] = {}
    for rid, t, raw in zip(blocks_df["request_id"].astype(str), blocks_df["t_unix_s"],
                           blocks_df["block_hashes"], strict=True):
        key = _SUFFIX.sub("", rid)
        hashes[key] = tuple(int(h) for h in np.frombuffer(raw or b"", dtype="<i8"))
        if is_number(t):
            added[key] = float(t) - t0
    out = []
    for r in reqs.itertuples(index=False):
        key = _SUFFIX.sub("", str(r.request_id))
        arrival = added.get(key, float(r.t_finished_unix_s) - float(r.e2e_s) - t0)
        out.append(SimRequest(key, arrival, int(r.prompt_tokens), int(r.generation_tokens), hashes.get(key, ())))
    base, per_token, per_seq, max_batch = _fit_steps(session, eid)
    recorded = Settings(int(blocks), int(eng.get("max_num_seqs") or 256),
                        int(eng.get("max_num_batched_tokens") or 8192))
    startup = session.table("startup_memory")
    profile = ({k: finite_or_none(v) for k, v in startup.sort_values("rank").iloc[0].to_dict().items()}
               if not startup.empty else {})
    util = eng.get("gpu_memory_utilization")
    return Demand(eid, int(bs), out, base, per_token, recorded, per_seq, max_batch, profile,
                  bytes_per_block(session, eid), float(util) if is_number(util) else None)


@dataclass(frozen=True)
class Model:
    """A session's demand, its what-if curve and the model's error at the recorded settings."""

    demand: Demand
    curve: whatif.MissRatioCurve | None
    baseline: Prediction
    """The model at the recorded settings (compare with ``measured``)."""
    measured: dict[str, float | None]
    """What the session measured: preemptions, queued_p50_s, e2e_p50_s, prefix_hit_rate."""

    def predict(self, settings: Settings) -> Prediction:
        """The prediction at ``settings`` (the baseline, already run, at the recorded ones)."""
        if settings == self.demand.recorded:
            return self.baseline
        return run(self.demand, settings, self.curve)

    def times_extrapolated(self, p: Prediction) -> bool:
        """True when ``p`` ran batches well beyond any the session's steps had (its times then rest
        on an extrapolated step cost)."""
        return p.max_batch > max(1.5 * self.demand.fitted_max_batch, self.demand.fitted_max_batch + 2)

    def settings_for(self, change: dict[str, Any]) -> tuple[Settings, str]:
        """Recorded settings with ``change`` (EngineArgs names) applied, and a note on how a
        ``gpu_memory_utilization`` became blocks ("" otherwise)."""
        s, note = self.demand.recorded, ""
        if "num_gpu_blocks_override" in change:
            s = replace(s, num_blocks=int(change["num_gpu_blocks_override"]))
        if "max_num_seqs" in change:
            s = replace(s, max_num_seqs=int(change["max_num_seqs"]))
        if "max_num_batched_tokens" in change:
            s = replace(s, max_num_batched_tokens=int(change["max_num_batched_tokens"]))
        if "gpu_memory_utilization" in change and "num_gpu_blocks_override" not in change:
            util = float(change["gpu_memory_utilization"])
            blocks = blocks_at_utilization(util, self.demand.startup, self.demand.bytes_per_block)
            if blocks is None:
                note = ("gpu_memory_utilization cannot be turned into blocks here (no GPU start-up profile "
                        "or bytes per block): the cache size is left as recorded")
            else:
                s = replace(s, num_blocks=blocks)
                note = (f"gpu_memory_utilization {util:.2f} leaves room for {blocks:,} blocks (start-up "
                        "profile: device total × utilization − weights − activation peak − non-torch − "
                        "CUDA graphs, over bytes per block)")
        return s, note


def measured(session: Session, engine_id: int) -> dict[str, float | None]:
    """The session's own numbers that a prediction is compared with."""
    pre, q, h = session.rows("SELECT SUM(preemptions), SUM(prefix_queries_tokens), SUM(prefix_hits_tokens) "
                             "FROM steps WHERE engine_id = ?", (engine_id,))[0]
    reqs = session.table("requests", "WHERE engine_id = ?", (engine_id,))
    return {"preemptions": pre, "queued_p50_s": percentile(reqs["queued_s"], 0.5) if not reqs.empty else None,
            "e2e_p50_s": percentile(reqs["e2e_s"], 0.5) if not reqs.empty else None,
            "prefix_hit_rate": (h / q) if q and h is not None and h <= q else None}


def model(session: Session, engine_id: int | None = None) -> Model:
    """Load the demand, the what-if curve (when the session has prompt-block hashes) and run the
    model once at the recorded settings."""
    demand = load_demand(session, engine_id)
    try:
        curve = whatif.analyse(session, demand.engine_id).curve
    except (ValueError, NotAnalysable):
        curve = None
    return Model(demand, curve, run(demand, demand.recorded, curve), measured(session, demand.engine_id))


def util_for_blocks(demand: Demand, blocks: int) -> float | None:
    """The ``gpu_memory_utilization`` that gives ``blocks`` blocks (None off GPU)."""
    per, p = demand.bytes_per_block, demand.startup
    total = p.get("total_bytes")
    if not per or not total or p.get("device") != "cuda":
        return None
    used = sum(float(p.get(k) or 0.0) for k in ("weights_bytes", "activation_peak_bytes", "non_torch_bytes",
                                                "cuda_graph_bytes"))
    return math.ceil((used + blocks * per) / float(total) * 100) / 100


def blocks_for_hit_rate(m: Model, target: float, settings: Settings | None = None,
                        hi: int | None = None, lo: int = 2) -> int | None:
    """Smallest ``num_blocks`` at which the scheduler model's own prefix hit rate reaches ``target``
    (other settings as ``settings``, default the recorded ones); None when even ``hi`` blocks
    (default: 4 × the what-if curve's size for the unbounded hit rate) fall short. A bisection:
    about ten simulation runs."""
    base = settings or m.demand.recorded
    top = hi or max(4 * ((m.curve.blocks_for(1.0) if m.curve else None) or base.num_blocks), base.num_blocks + 1)

    def rate(n: int) -> float:
        r = m.predict(replace(base, num_blocks=n)).model_hit_rate
        return r if r is not None else 0.0

    if rate(top) < target:
        return None
    while lo < top:
        mid = (lo + top) // 2
        if rate(mid) >= target:
            top = mid
        else:
            lo = mid + 1
    return top
