"""The Timeline's linked chart for a session and a view (plain module: no Streamlit).

The page lays out the controls around it; ``dashboard.serve`` calls it once for the first
session's default view at start, so the first Timeline opened finds its spec already built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from dashboard.charts import kv_whole
from dashboard.charts import marks as chart_marks
from dashboard.charts import memory as chart_memory
from dashboard.charts import panels as charts
from dashboard.data import marks as mk
from dashboard.data.attribution import device_attribution, shown_devices
from dashboard.data.kv_whole import forensics_memo, with_recorded_preemptions
from dashboard.data.session import SessionData
from dashboard.data.steps import View

BUCKETS = 400
"""Pixel buckets per panel (about one per 2-3 px at common widths)."""

ROLLING_OPTIONS_S: tuple[float, ...] = (0.1, 0.5, 1, 5, 10, 30, 60)
DEFAULT_ROLLING_S = 1.0

FOCUS_PANEL: dict[str, str] = {
    "KV_SATURATION": "kv", "KV_OVERPROVISIONED": "kv", "PREEMPTION_STORM": "preempt",
    "PREFIX_THRASH": "hit", "QUEUEING": "queue", "OOM_RUNTIME": "gpu", "OOM_STARTUP": "gpu",
    "GPU_MEMORY_PRESSURE": "gpu", "PREFIX_BELOW_BLOCK": "hit", "TIER_WRITE_ONLY": "hit",
    "TIER_SLOW_LOAD": "hit", "TIER_TOO_SMALL": "hit",
}
"""The panel that shows each finding (its key prefix); "Open in Timeline" puts it first. Pages that
add finding codes add them here."""

PANEL_NAMES: dict[str, str] = {
    "gpu": "GPU memory by owner", "kv": "KV cache usage", "queue": "requests running and waiting",
    "preempt": "preemptions", "hit": "prefix-cache hit rate", "tput": "throughput",
}


def whole_view(data: SessionData) -> View:
    """The navigator's range: the whole session, start-up included."""
    return View(0.0, max(data.duration_s, 1e-3), BUCKETS)


def startup_end_s(data: SessionData) -> float | None:
    """When the first engine finished starting (the navigator shades what came before)."""
    engine_start = data.events[data.events["kind"] == "engine_start"]["t_s"]
    return float(engine_start.min()) if not engine_start.empty else None


def _gpu_strip(data: SessionData) -> pd.DataFrame | None:
    """Peak device memory used (fraction of total) per navigator bucket, for sessions without steps."""
    g = data.gpu_samples.dropna(subset=["used_bytes", "total_bytes"])
    if g.empty:
        return None
    whole = whole_view(data)
    b = ((g["t_s"] - whole.t0_s) / whole.width_s).clip(0, whole.buckets - 1).astype(int)
    frac = (g["used_bytes"] / g["total_bytes"]).groupby(b).max()
    return pd.DataFrame({"t_s": whole.t0_s + frac.index.to_numpy() * whole.width_s, "kv": frac.to_numpy()})


@dataclass
class _SessionParts:
    """What a session's Timeline draws the same at every zoom: its marks (engine start, OOMs,
    findings, the focused one), the navigator's marks, start-up end and GPU strip."""

    data: SessionData
    findings: list[dict[str, Any]]
    focus: tuple[float, float, str] | None
    marks: pd.DataFrame
    nav_marks: dict[str, pd.DataFrame]
    startup_end_s: float | None
    gpu_strip: pd.DataFrame | None


_PARTS: list[_SessionParts] = []
PARTS_MAX = 8
"""Sessions (with their findings and focus) whose zoom-independent parts are kept."""


def _session_parts(data: SessionData, findings: list[dict[str, Any]],
                   focus: tuple[float, float, str] | None) -> _SessionParts:
    """The zoom-independent parts of ``data``'s Timeline, built once per session, findings (the
    same list object) and focus: a zoom then rebuilds only what its range changes."""
    for p in _PARTS:
        if p.data is data and p.findings is findings and p.focus == focus:
            return p
    marks = mk.session_marks(data, findings, focus)
    p = _SessionParts(data, findings, focus, marks, chart_marks.in_view_frames(marks, whole_view(data)),
                      startup_end_s(data), _gpu_strip(data))
    _PARTS.append(p)
    del _PARTS[:-PARTS_MAX]
    return p


def focus_panel_key(code: str | None) -> str | None:
    """Key prefix of the panel that shows finding ``code`` (None: keep the usual order)."""
    return FOCUS_PANEL.get(code or "")


_NO_FINDINGS: list[dict[str, Any]] = []
"""The findings of a session drawn before its diagnosis (one object, so its parts are reused)."""


def linked_chart(data: SessionData, view: View, buckets: pd.DataFrame, whole_buckets: pd.DataFrame,
                 brush: tuple[float, float] | None, rolling_s: float = DEFAULT_ROLLING_S,
                 analysis: tuple[dict[str, Any], list[dict[str, Any]]] | None = None,
                 focus: tuple[float, float, str] | None = None) -> charts.LinkedTimeline:
    """Navigator over the whole session plus one panel per metric over ``view``.

    ``buckets`` are the steps of ``view``, ``whole_buckets`` those of ``whole_view(data)``;
    ``brush`` is where the navigator's brush starts (None: no brush). ``analysis`` is the session's
    (report, findings): finding ranges, OOMs and engine start are marked on every panel, only the
    devices that matter get a memory panel. ``focus`` (t0, t1, code) highlights a finding's range
    and puts the panel that shows it first.
    """
    report, findings = analysis if analysis is not None else ({}, _NO_FINDINGS)
    whole = whole_view(data)
    parts = _session_parts(data, findings, focus)
    nav = charts.navigator_panel(whole_buckets, whole, brush, parts.startup_end_s, view,
                                 fallback=parts.gpu_strip, what="peak GPU memory used")
    nav = chart_marks.panel_with_marks(nav, parts.nav_marks, whole)
    keyed: list[tuple[str, charts.Panel]] = []
    if data.has_gpu_samples:
        kv_bytes = (report.get("kv_cache") or {}).get("size_bytes")
        gpus = data.gpus.drop_duplicates("device_index").set_index("device_index") if not data.gpus.empty else None
        for dev in shown_devices(data, findings):
            name = str(gpus.loc[dev, "name"]) if gpus is not None and dev in gpus.index else "GPU"
            total = gpus.loc[dev, "total_bytes"] if gpus is not None and dev in gpus.index else None
            df = device_attribution(data, dev, view.t0_s, view.t1_s, BUCKETS, kv_bytes)
            keyed.append((f"gpu:{dev}", chart_memory.attribution_panel(
                df, view, f"GPU {dev} ({name}) memory by owner (NVML used; engine processes split by "
                "the start-up profile and the KV cache they held)", total)))
    if data.steps.total_steps:
        # vLLM's step counters, or each preemption the engine core recorded, with what it cost
        forensics = forensics_memo(data.path) if data.preemption_record else None
        recorded = forensics is not None and forensics.recorded
        preempting = with_recorded_preemptions(buckets, forensics, view) if forensics else buckets
        keyed += [
            ("kv", charts.kv_usage_panel(buckets, view, data.num_blocks())),
            ("queue", charts.queue_panel(buckets, view)),
            ("preempt", charts.preemption_panel(preempting, view, smooth_s=rolling_s,
                                                recorded=recorded)),
        ]
        if forensics is not None and recorded:
            keyed.append(("preempt_each", kv_whole.preemption_marks_panel(forensics.table, view)))
        keyed += [
            ("hit", charts.prefix_hit_panel(buckets, view, rolling_s)),
            ("tput", charts.throughput_panel(buckets, view, smooth_s=rolling_s)),
        ]
    order = ordered_keys([k for k, _ in keyed], focus[2] if focus else None)
    keyed.sort(key=lambda kp: order.index(kp[0]))
    in_view = chart_marks.in_view_frames(parts.marks, view)
    panels = [chart_marks.panel_with_marks(p, in_view, view) for _, p in keyed]
    return charts.linked_timeline(nav, panels, view, shared=in_view)


def ordered_keys(keys: list[str], code: str | None) -> list[str]:
    """Panel keys with the panel that shows finding ``code`` first (the others keep their order)."""
    first = focus_panel_key(code)
    return sorted(keys, key=lambda k: 0 if first and k.split(":")[0] == first else 1)


def panel_keys(data: SessionData, findings: list[dict[str, Any]]) -> list[str]:
    """Keys of the panels ``linked_chart`` draws for the session, in their usual order."""
    keys = [f"gpu:{d}" for d in shown_devices(data, findings)] if data.has_gpu_samples else []
    each = ["preempt_each"] if data.preemption_record and forensics_memo(data.path).recorded else []
    return keys + (["kv", "queue", "preempt", *each, "hit", "tput"] if data.steps.total_steps else [])
