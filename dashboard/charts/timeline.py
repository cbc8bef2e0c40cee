"""The Timeline's linked chart for a session and a view (plain module: no Streamlit).

The page lays out the controls around it; ``dashboard.serve`` calls it once for the first
session's default view at start, so the first Timeline opened finds its spec already built.
"""

from __future__ import annotations

import pandas as pd

from dashboard.charts import kv_whole
from dashboard.charts import panels as charts
from dashboard.data.downsample import minmax_frame
from dashboard.data.kv_whole import forensics_memo
from dashboard.data.session import SessionData
from dashboard.data.steps import View

BUCKETS = 400
"""Pixel buckets per panel (about one per 2-3 px at common widths)."""

ROLLING_OPTIONS_S: tuple[float, ...] = (0.1, 0.5, 1, 5, 10, 30, 60)
DEFAULT_ROLLING_S = 1.0


def whole_view(data: SessionData) -> View:
    """The navigator's range: the whole session, start-up included."""
    return View(0.0, max(data.duration_s, 1e-3), BUCKETS)


def startup_end_s(data: SessionData) -> float | None:
    """When the first engine finished starting (the navigator shades what came before)."""
    engine_start = data.events[data.events["kind"] == "engine_start"]["t_s"]
    return float(engine_start.min()) if not engine_start.empty else None


def linked_chart(data: SessionData, view: View, buckets: pd.DataFrame, whole_buckets: pd.DataFrame,
                 brush: tuple[float, float] | None, rolling_s: float = DEFAULT_ROLLING_S
                 ) -> charts.LinkedTimeline:
    """Navigator over the whole session plus one panel per metric over ``view``.

    ``buckets`` are the steps of ``view``, ``whole_buckets`` those of ``whole_view(data)``;
    ``brush`` is where the navigator's brush starts (None: no brush).
    """
    whole = whole_view(data)
    nav = charts.navigator_panel(whole_buckets, whole, brush, startup_end_s(data), view)
    panels: list[charts.Panel] = []
    if data.has_gpu_samples:
        startup = data.startup_memory.iloc[0] if not data.startup_memory.empty else None
        for _, g in data.gpus.drop_duplicates("device_index").iterrows():
            dev = int(g["device_index"])
            s = data.gpu_samples[data.gpu_samples["device_index"] == dev]
            s = minmax_frame(s, "t_s", ["used_bytes"], view.t0_s, view.t1_s, BUCKETS)
            panels.append(charts.gpu_memory_panel(
                s, startup, g["total_bytes"], view, f"GPU {dev} memory ({g['name']}): NVML used, split by "
                "the start-up profile"))
    forensics = forensics_memo(data.path)
    panels += [
        charts.kv_usage_panel(buckets, view, data.num_blocks()),
        charts.queue_panel(buckets, view),
        charts.preemption_panel(buckets, view, smooth_s=rolling_s),
        *([kv_whole.preemption_marks_panel(forensics.table, view)] if forensics.recorded else []),
        charts.prefix_hit_panel(buckets, view, rolling_s),
        charts.throughput_panel(buckets, view, smooth_s=rolling_s),
    ]
    return charts.linked_timeline(nav, panels, view)
