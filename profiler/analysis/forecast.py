"""Forecasts for a live session: when the KV cache will saturate, when the device will run out.

A forecast is a least-squares line through the most recent samples of a level that only gets worse
as it rises (KV-cache usage; device memory in use; the allocator's reserved bytes), extrapolated
to the level's ceiling. It is given only when the trend says so: the line rises, explains most of
the samples' variance (``MIN_R2``), spans enough samples and time, and reaches the ceiling within
``HORIZON_S``. Each forecast is a ``Finding`` (``FORECAST_KV_SATURATION``, ``FORECAST_OOM``) with
the numbers behind it and the settings that would avoid it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis.diagnosis import thresholds as th
from profiler.analysis.diagnosis.findings import (
    WARNING,
    EngineView,
    Finding,
    engine_views,
    session_t0,
    size_advice,
    startup_row,
)
from profiler.session.reader import Session, open_session
from profiler.units import fmt_bytes, fmt_pid

FIT_S = 60.0
"""Forecasts fit the samples of the last this-many seconds of the window."""
MIN_SAMPLES = 10
"""... at least this many ..."""
MIN_SPAN_S = 5.0
"""... spanning at least this long."""
MIN_R2 = 0.6
"""The line must explain at least this share of the samples' variance (a clear trend)."""
HORIZON_S = 1800.0
"""Only a ceiling reached within this long is forecast (further is not a trend to act on now)."""
DEVICE_FULL_FRAC = 0.99
"""Device memory in use at this share of the total is out of memory for forecasting."""


@dataclass(frozen=True)
class Trend:
    """A line through (t, level) samples."""

    slope_per_s: float
    level_now: float
    """The line's value at the last sample."""
    r2: float
    samples: int
    span_s: float
    t_last_unix_s: float

    def eta_s(self, ceiling: float) -> float | None:
        """Seconds from the last sample until the line reaches ``ceiling`` (None: it does not)."""
        if self.slope_per_s <= 0 or self.level_now >= ceiling:
            return None
        return (ceiling - self.level_now) / self.slope_per_s

    @property
    def clear(self) -> bool:
        """Enough samples, time and fit to forecast from."""
        return self.samples >= MIN_SAMPLES and self.span_s >= MIN_SPAN_S and self.r2 >= MIN_R2


def trend(t_unix_s: Any, level: Any) -> Trend | None:
    """Least-squares trend of ``level`` over the last FIT_S seconds of ``t_unix_s`` (None: too few)."""
    t = np.asarray(t_unix_s, dtype=float)
    y = np.asarray(level, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size < 2:
        return None
    keep = t >= t.max() - FIT_S
    t, y = t[keep], y[keep]
    if t.size < 2 or t.max() - t.min() <= 0:
        return None
    x = t - t.max()
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    return Trend(float(slope), float(intercept), r2, int(t.size), float(t.max() - t.min()), float(t.max()))


def _eta_text(eta_s: float) -> str:
    return f"{eta_s:.0f} s" if eta_s < 120 else f"{eta_s / 60:.1f} min"


def kv_saturation_forecast(session: Session, views: list[EngineView] | None = None) -> list[Finding]:
    """Per engine: KV usage rising towards the ceiling (``KV_CEILING_FRAC``) it has not reached.

    ``views``: the session's ``engine_views`` when the caller already has them."""
    t0 = session_t0(session)
    out = []
    for view in engine_views(session) if views is None else views:
        s = view.steps
        if not s.empty:  # the fit reads only its last FIT_S seconds
            s = s[s["t_unix_s"] >= s["t_unix_s"].max() - FIT_S]
        if s.empty or s["kv_usage_frac"].isna().all() or not view.num_blocks:
            continue
        tr = trend(s["t_unix_s"], s["kv_usage_frac"])
        last = float(s["kv_usage_frac"].dropna().iloc[-1])
        if tr is None or not tr.clear or last >= th.KV_CEILING_FRAC:
            continue
        eta = tr.eta_s(th.KV_CEILING_FRAC)
        if eta is None or eta > HORIZON_S:
            continue
        n = view.num_blocks
        # blocks the demand will need when the trend has run its horizon, at the target usage
        used_at_horizon = (tr.level_now + tr.slope_per_s * HORIZON_S) * (n - 1)
        needed = max(math.ceil(used_at_horizon / th.KV_TARGET_FRAC) + 1, n + 1)
        advice, settings = size_advice(view, session, needed)
        msg = (f"KV cache usage rises {tr.slope_per_s * 60:+.1%} of {n} blocks per minute (now "
               f"{tr.level_now:.0%}, fit over {tr.span_s:.0f} s, R² {tr.r2:.2f}): at this rate it "
               f"reaches {th.KV_CEILING_FRAC:.0%} in ~{_eta_text(eta)}, when requests start to wait "
               "or be preempted")
        rec = (f"the trend over {HORIZON_S / 60:.0f} min needs ≥ {needed} blocks at "
               f"{th.KV_TARGET_FRAC:.0%} use: {advice}; or cap the load (--max-num-seqs) before it")
        out.append(Finding("FORECAST_KV_SATURATION", WARNING, tr.t_last_unix_s - t0,
                           tr.t_last_unix_s - t0 + eta, msg, rec, view.engine_id,
                           {"eta_s": eta, "slope_frac_per_s": tr.slope_per_s,
                            "usage_frac_now": tr.level_now, "r2": tr.r2, "samples": tr.samples,
                            "needed_blocks": needed}, settings))
    return out


def _growth(df: pd.DataFrame, col: str) -> Trend | None:
    df = df.dropna(subset=[col, "t_unix_s"]).sort_values("t_unix_s")
    return trend(df["t_unix_s"], df[col]) if not df.empty else None


def oom_forecast(session: Session) -> list[Finding]:
    """Per device: NVML memory in use rising towards the total, attributed to what grows (the
    engine's allocator, the engine's other memory, or processes outside the session)."""
    gpu = session.table("gpu_samples")
    if gpu.empty:
        return []
    t0 = session_t0(session)
    own = set(session.table("processes")["pid"].dropna().astype(int))
    procs = session.table("gpu_process_samples")
    alloc = session.table("allocator_samples")
    engines = session.table("engines")
    util = None
    if not engines.empty and engines["gpu_memory_utilization"].notna().any():
        util = float(engines["gpu_memory_utilization"].dropna().iloc[0])
    if util is None:
        mem = startup_row(session) or {}
        if mem.get("budget_bytes") and mem.get("total_bytes"):
            util = mem["budget_bytes"] / mem["total_bytes"]
    out = []
    for dev, g in gpu.groupby("device_index"):
        total = float(g["total_bytes"].max()) if g["total_bytes"].notna().any() else None
        tr = _growth(g, "used_bytes")
        if not total or tr is None or not tr.clear:
            continue
        ceiling = DEVICE_FULL_FRAC * total
        eta = tr.eta_s(ceiling)
        if eta is None or eta > HORIZON_S:
            continue
        p = procs[procs["device_index"] == dev] if not procs.empty else procs
        causes: dict[str, float] = {}
        foreign_pids: list[int] = []
        if not p.empty:
            mine = p[p["pid"].isin(own)].groupby("t_unix_s", as_index=False)["used_bytes"].sum()
            theirs = p[~p["pid"].isin(own)]
            own_tr = _growth(mine, "used_bytes") if not mine.empty else None
            if own_tr is not None and own_tr.slope_per_s > 0:
                causes["the engine's processes"] = own_tr.slope_per_s
            if not theirs.empty:
                per = theirs.groupby("t_unix_s", as_index=False)["used_bytes"].sum()
                f_tr = _growth(per, "used_bytes")
                if f_tr is not None and f_tr.slope_per_s > 0:
                    causes["other processes"] = f_tr.slope_per_s
                    foreign_pids = sorted(int(x) for x in theirs["pid"].dropna().unique())
        a = alloc[alloc["device_index"] == dev] if not alloc.empty else alloc
        if not a.empty:
            reserved = a.groupby("t_unix_s", as_index=False)["reserved_bytes"].sum()
            a_tr = _growth(reserved, "reserved_bytes")
            if a_tr is not None and a_tr.slope_per_s > 0:
                causes["the PyTorch allocator"] = a_tr.slope_per_s
        top = max(causes, key=lambda k: causes[k]) if causes else None
        # room for as much growth again as the fit saw: enough if the growth levels off (a
        # warm-up, a larger batch); growth that never stops outruns any headroom
        need = tr.slope_per_s * tr.span_s
        settings: dict[str, Any] = {}
        options = []
        if util is not None and need > 0:
            lowered = math.floor((util - need / total) * 100) / 100
            if 0 < lowered < util:
                settings["gpu_memory_utilization"] = lowered
                options.append(f"gpu_memory_utilization {util:.2f} → {lowered:.2f} leaves "
                               f"{fmt_bytes(need)} more, as much as grew in the last "
                               f"{tr.span_s:.0f} s (enough only if the growth levels off)")
        if top == "other processes":
            options.insert(0, f"move {', '.join(fmt_pid(x) for x in foreign_pids) or 'the other processes'} "
                              "off this GPU")
        elif top == "the PyTorch allocator":
            options.append("lower --max-num-batched-tokens (activations) and set "
                           "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (fragmentation)")
        elif not options:
            options.append("leave more headroom: lower gpu_memory_utilization")
        grow = f"{fmt_bytes(tr.slope_per_s * 60)}/min"
        by = f", mostly {top} (+{fmt_bytes(causes[top] * 60)}/min)" if top else ""
        msg = (f"GPU {int(dev)}: memory in use grows {grow}{by}: {fmt_bytes(tr.level_now)} of "
               f"{fmt_bytes(total)} now (fit over {tr.span_s:.0f} s, R² {tr.r2:.2f}); at this rate "
               f"the device is full in ~{_eta_text(eta)}")
        out.append(Finding("FORECAST_OOM", WARNING, tr.t_last_unix_s - t0, tr.t_last_unix_s - t0 + eta,
                           msg, "; or ".join(options), None,
                           {"device_index": int(dev), "eta_s": eta, "growth_bytes_per_s": tr.slope_per_s,
                            "used_bytes_now": tr.level_now, "total_bytes": total, "r2": tr.r2,
                            "cause": top, "causes_bytes_per_s": causes}, settings))
    return out


def forecasts(session: Session) -> list[Finding]:
    """Every forecast for ``session`` (usually a live window of it), from its last FIT_S seconds."""
    start, end = session.bounds()
    if end is None:
        return []
    # the fits read the last FIT_S seconds only: a narrower window of the same file
    with open_session(session.path, window=(max(float(end) - FIT_S, float(start or end)),
                                            float(end))) as recent:
        return kv_saturation_forecast(recent) + oom_forecast(recent)
