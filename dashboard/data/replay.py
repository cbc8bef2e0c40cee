"""Engine state at a replay cursor: the step there, what changed since the step before, KV picture."""

from __future__ import annotations

import math
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

MAX_SQUARES = 512
"""The KV picture draws at most this many squares (one square = several blocks beyond it)."""

CHANGE_FIELDS: tuple[tuple[str, str], ...] = (
    ("running", "running requests"), ("waiting", "waiting requests"),
    ("kv_blocks_used", "KV blocks used"), ("preemptions", "preempted this step"),
    ("prompt_tokens", "prompt tokens this step"), ("generation_tokens", "generated tokens this step"),
    ("prefix_hits_tokens", "prefix-cache hit tokens"), ("finished", "requests finished"),
)


@dataclass
class CursorState:
    """The engine step at (or just before) the cursor and the one before it."""

    t_s: float | None
    now: dict[str, float]
    previous: dict[str, float] | None
    next_t_s: float | None
    prev_t_s: float | None


def cursor_state(around: pd.DataFrame, t_s: float, num_blocks: int | None) -> CursorState:
    """Build the cursor state from ``steps_around(t_s, before=2, after=1)`` rows."""
    if around.empty:
        return CursorState(None, {}, None, None, None)
    at = around[around["t_s"] <= t_s]
    after = around[around["t_s"] > t_s]
    if at.empty:
        first = around.iloc[0]
        return CursorState(None, {}, None, float(first["t_s"]), None)

    def row_dict(r: pd.Series) -> dict[str, float]:
        d = {k: float(v) for k, v in r.items() if isinstance(v, int | float | np.integer | np.floating)}
        kv = d.get("kv_usage_frac")
        d["kv_blocks_used"] = (round(kv * num_blocks) if num_blocks and kv is not None and not
                               math.isnan(kv) else float("nan"))
        return d

    now = row_dict(at.iloc[-1])
    prev = row_dict(at.iloc[-2]) if len(at) >= 2 else None
    return CursorState(now["t_s"], now, prev, float(after.iloc[0]["t_s"]) if not after.empty else None,
                       prev["t_s"] if prev else None)


def changes(state: CursorState) -> pd.DataFrame:
    """What changed from the previous step to the cursor's: ``what``, ``previous``, ``now``, ``change``."""
    rows = []
    for key, label in CHANGE_FIELDS:
        now = state.now.get(key, float("nan"))
        prev = state.previous.get(key, float("nan")) if state.previous else float("nan")
        change = now - prev if not (math.isnan(now) or math.isnan(prev)) else float("nan")
        rows.append({"what": label, "previous": prev, "now": now, "change": change})
    return pd.DataFrame(rows)


def kv_blocks_picture(used_blocks: int, total_blocks: int, columns: int = 32) -> alt.Chart:
    """A grid of KV blocks, used ones filled: the cache at a glance (squares group blocks when many)."""
    per = max(1, math.ceil(total_blocks / MAX_SQUARES))
    squares = math.ceil(total_blocks / per)
    used_sq = min(math.ceil(used_blocks / per), squares) if used_blocks > 0 else 0
    idx = np.arange(squares)
    cols = min(columns, squares) if squares else 1
    df = pd.DataFrame({
        "col": idx % cols, "row": idx // cols,
        "state": np.where(idx < used_sq, "used", "free"),
        "blocks": [f"{i * per}–{min((i + 1) * per, total_blocks) - 1}" if per > 1 else str(i) for i in idx],
    })
    unit = "block" if per == 1 else f"{per} blocks"
    rows = int(df["row"].max()) + 1 if squares else 1
    return alt.Chart(df).mark_rect(stroke="#ffffff", strokeWidth=2).encode(
        x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None),
        color=alt.Color("state:N", title=None, scale=alt.Scale(
            domain=["used", "free"], range=["#4c78a8", "#e6e6e6"]), legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("blocks:N", title="block(s)"), "state:N"],
    ).properties(title=f"KV cache: {used_blocks} of {total_blocks} blocks used (one square = {unit})",
                 height=16 * rows, width=16 * cols, autosize=alt.AutoSizeParams(type="pad"))
