"""The Finding record and the per-engine view of a session that the diagnosis rules read."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis.diagnosis import thresholds as th
from profiler.session.reader import Session
from profiler.units import fmt_bytes

INFO, WARNING, CRITICAL = "info", "warning", "critical"
"""Finding severities."""


@dataclass
class Finding:
    """One diagnosed problem with the numbers behind it."""

    code: str
    severity: str
    """info, warning or critical."""
    t_start_s: float | None
    """Start of the affected range, seconds from session start."""
    t_end_s: float | None
    message: str
    recommendation: str | None
    engine_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """The numbers behind the message (units in the keys)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Suggested engine settings (EngineArgs names) that the recommendation proposes."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class EngineView:
    """One engine's configuration, scheduled steps and finished requests, times from session start."""

    engine_id: int
    label: str
    config: dict[str, Any]
    steps: pd.DataFrame
    """Scheduled steps with ``rel_s`` (start, from session start), ``dt_s`` (step length), ``busy``."""
    requests: pd.DataFrame
    t0_unix_s: float

    def get(self, key: str) -> Any:
        """An engine setting, None when not recorded."""
        v = self.config.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return v.item() if isinstance(v, np.generic) else v

    @property
    def block_size(self) -> int | None:
        v = self.get("block_size")
        return int(v) if v is not None else None

    @property
    def num_blocks(self) -> int | None:
        v = self.get("num_gpu_blocks")
        return int(v) if v is not None else None

    @property
    def busy_s(self) -> float:
        """Total length of the steps with work."""
        return float(self.steps.loc[self.steps["busy"], "dt_s"].sum()) if not self.steps.empty else 0.0


@dataclass
class Span:
    """Where a per-step condition held."""

    steps: int
    duration_s: float
    busy_frac: float
    t_start_s: float | None
    t_end_s: float | None

    @property
    def sustained(self) -> bool:
        """Held long enough to report (see thresholds.SUSTAINED_*)."""
        return self.steps >= th.SUSTAINED_MIN_STEPS and self.busy_frac >= th.SUSTAINED_MIN_BUSY_FRAC

    @property
    def severity(self) -> str:
        """Warning, or critical when it held for most of the busy time."""
        return CRITICAL if self.busy_frac >= th.CRITICAL_BUSY_FRAC else WARNING


def span(view: EngineView, mask: pd.Series) -> Span:
    """Time-weighted extent of the steps where ``mask`` is true."""
    s = view.steps
    hit = s[mask.reindex(s.index, fill_value=False).astype(bool)]
    if hit.empty:
        return Span(0, 0.0, 0.0, None, None)
    dur = float(hit["dt_s"].sum())
    busy = view.busy_s
    return Span(len(hit), dur, dur / busy if busy > 0 else 0.0,
                float(hit["rel_s"].min()), float((hit["rel_s"] + hit["dt_s"]).max()))


def session_t0(session: Session) -> float:
    """Session start in unix seconds (meta, else the earliest timestamp)."""

    start, _ = session.bounds()
    return float(start) if start is not None else 0.0


def engine_views(session: Session) -> list[EngineView]:
    """One view per engine that has a configuration row."""
    t0 = session_t0(session)
    engines = session.table("engines")
    steps = session.numeric("steps")
    requests = session.table("requests")
    out = []
    for _, row in engines.iterrows():
        eid = int(row["engine_id"])
        st = steps[(steps["engine_id"] == eid) & steps["running"].notna()].sort_values("t_unix_s")
        st = st.reset_index(drop=True)
        if not st.empty:
            t = st["t_unix_s"].to_numpy(dtype=float)
            nxt = np.append(t[1:], np.nan)
            dt = nxt - t
            typical = float(np.nanmedian(dt)) if len(t) > 1 else 0.0
            dt = np.where(np.isnan(dt), typical, dt)
            st["dt_s"] = np.clip(dt, 0.0, th.MERGE_GAP_S)
            st["rel_s"] = t - t0
            st["busy"] = (st["running"].fillna(0) + st["waiting"].fillna(0)) > 0
        else:
            st = st.assign(dt_s=pd.Series(dtype=float), rel_s=pd.Series(dtype=float),
                           busy=pd.Series(dtype=bool))
        label = f"engine {eid}" + (f" ({row['label']})" if isinstance(row["label"], str) else "")
        out.append(EngineView(eid, label, row.to_dict(), st,
                              requests[requests["engine_id"] == eid].reset_index(drop=True), t0))
    return out


def startup_row(session: Session) -> dict[str, Any] | None:
    """The first worker's start-up memory row (rank 0 when present)."""
    df = session.table("startup_memory")
    if df.empty:
        return None
    df = df.sort_values(["rank", "t_unix_s"], na_position="last")
    row = df.iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def kv_bytes_per_block(session: Session, view: EngineView) -> float | None:
    """Bytes of one KV block per worker: the recorder's ``kv_cache_config`` event, else start-up
    KV bytes / blocks (wrong under ``num_gpu_blocks_override``, so only a fallback)."""
    df = session.table("events", "WHERE kind = 'kv_cache_config' ORDER BY t_unix_s")
    for raw in df["details_json"].dropna():
        try:
            per_block = json.loads(raw).get("bytes_per_block")
        except (ValueError, AttributeError):
            continue
        if per_block:
            return float(per_block)
    mem = startup_row(session)
    if mem and mem.get("kv_cache_bytes") and view.num_blocks:
        return mem["kv_cache_bytes"] / view.num_blocks
    return None


def size_advice(view: EngineView, session: Session, needed_blocks: int) -> tuple[str, dict[str, Any]]:
    """How to get ``needed_blocks`` KV blocks on this engine: text and EngineArgs settings.

    When start-up measured room for at least that many blocks (the cache was capped by
    ``num_gpu_blocks_override``), the override is the setting; otherwise ``gpu_memory_utilization``
    on GPUs, then fp8 KV / more GPUs when even the highest utilization is short.
    """
    bs, have = view.block_size, view.num_blocks
    mem = startup_row(session) or {}
    per_block = kv_bytes_per_block(session, view)
    room = int(mem["kv_cache_bytes"] // per_block) if per_block and (mem.get("kv_cache_bytes") or 0) > 0 else None
    override = (f"--num-gpu-blocks-override {needed_blocks}", {"num_gpu_blocks_override": needed_blocks})
    if room is not None and room >= needed_blocks:
        return (f"{override[0]} (start-up measured room for {room:,} blocks: the cache was capped below "
                "what memory allows)"), override[1]
    util = view.get("gpu_memory_utilization")
    if mem.get("device") != "cuda" or not per_block or not mem.get("total_bytes") or util is None:
        text = override[0]
        if mem.get("device") == "cpu":
            text += " (CPU backend: or give the KV cache more memory with VLLM_CPU_KVCACHE_SPACE)"
        return text, override[1]
    extra = (needed_blocks - (room if room is not None else have or 0)) * per_block
    new_util = float(util) + extra / mem["total_bytes"]
    if new_util <= th.MAX_GPU_MEMORY_UTILIZATION:
        target = math.ceil(new_util * 100) / 100
        return (f"gpu_memory_utilization {float(util):.2f} → {target:.2f} (+{fmt_bytes(extra)} for KV at "
                f"{fmt_bytes(per_block)} per block of {bs})"), {"gpu_memory_utilization": target}
    parts = [f"{needed_blocks} blocks need {fmt_bytes(needed_blocks * per_block)} of KV, more than "
             f"gpu_memory_utilization {th.MAX_GPU_MEMORY_UTILIZATION:.2f} leaves"]
    settings: dict[str, Any] = {}
    dtype = str(view.get("kv_cache_dtype") or "auto")
    if "fp8" not in dtype:
        parts.append("--kv-cache-dtype fp8 (halves bytes per block)")
        settings = {"kv_cache_dtype": "fp8"}
    tp = int(view.get("tensor_parallel_size") or 1)
    parts.append(f"--tensor-parallel-size {tp * 2} (splits KV and weights over {tp * 2} GPUs)")
    return "; ".join(parts), settings
