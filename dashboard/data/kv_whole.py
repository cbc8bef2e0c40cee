"""The whole KV cache for the dashboard: preemption forensics, tiers, token occupancy, block sizes,
residency. Each computed once per file version (``FileMemo``); times as ``t_s`` from session start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboard.data.session import FileMemo
from dashboard.data.steps import View
from profiler.analysis import residency, summarized, tiers, whatif
from profiler.analysis.occupancy import engine_occupancy
from profiler.errors import NotAnalysable
from profiler.session.reader import open_session


@dataclass(frozen=True)
class Forensics:
    """Every preemption (``table``, with ``t_s``) and the report's ``preemption`` numbers."""

    summary: dict[str, Any]
    table: pd.DataFrame
    prefill_tokens_per_s: float | None
    recorded: bool
    """True when the engine core recorded each preemption (else only vLLM's counters)."""


def _start(session: Any) -> float:
    start, _ = session.bounds()
    return float(start) if start is not None else 0.0


def compute_forensics(path: str | Path) -> Forensics:
    """Preemption forensics of a session (the report's count: vLLM's step counters; a large
    session's read back from where it is stored with its summaries)."""
    with open_session(path) as session:
        s = summarized.preemptions(session)
        table = s.table.copy()
        t0 = _start(session)
        table.insert(0, "t_s", pd.to_numeric(table["t_unix_s"], errors="coerce") - t0)
        table["resumed_s"] = pd.to_numeric(table["resumed_unix_s"], errors="coerce") - t0
        table["waiting"] = table.pop("waiting")
        return Forensics(s.as_json(), table, s.prefill_tokens_per_s, bool(len(table)))


def preemption_times(forensics: Forensics, preempting: pd.DataFrame) -> pd.DataFrame:
    """When preemptions happened (``t_s``, ``engine_id``, ``preemptions``, ``waiting``): one row
    per preemption at the engine core's time where the session recorded each, else vLLM's
    preempting steps. vLLM counts a preemption when the preempted request next returns output
    (after it resumed), so its steps trail the preemptions by the time they were preempted."""
    if not forensics.recorded:
        return preempting
    t = forensics.table
    return pd.DataFrame({"t_s": pd.to_numeric(t["t_s"], errors="coerce"), "engine_id": t["engine_id"],
                         "preemptions": 1, "waiting": t["waiting"],
                         "kv_usage_frac": t["kv_usage_before_frac"]}).sort_values(
        "t_s", kind="stable").reset_index(drop=True)


def with_recorded_preemptions(buckets: pd.DataFrame, forensics: Forensics, view: View) -> pd.DataFrame:
    """``buckets`` with ``preemptions`` counted from the engine core's record (in the bucket of
    each preemption's own time) instead of vLLM's step counters; unchanged when not recorded."""
    if not forensics.recorded or buckets.empty:
        return buckets
    t = forensics.table
    idx = np.floor((pd.to_numeric(t["t_s"], errors="coerce") - view.t0_s) / view.width_s)
    inside = idx.notna() & (idx >= 0) & (idx < view.buckets)
    counts = pd.DataFrame({"engine_id": t.loc[inside, "engine_id"].to_numpy(),
                           "bucket": idx[inside].astype(int).to_numpy()}).value_counts()
    b = buckets.copy()
    b["preemptions"] = 0.0
    key = pd.MultiIndex.from_arrays([b["engine_id"], b["bucket"].astype(int)])
    b["preemptions"] = counts.reindex(key).fillna(0.0).to_numpy(dtype=float)
    missing = counts[~counts.index.isin(key)]
    if len(missing):
        extra = pd.DataFrame({"engine_id": [e for e, _ in missing.index],
                              "bucket": [k for _, k in missing.index], "n_steps": 0,
                              "preemptions": missing.to_numpy(dtype=float)})
        extra["t_lo_s"] = view.t0_s + extra["bucket"] * view.width_s
        extra["t_hi_s"] = extra["t_lo_s"]
        b = pd.concat([b, extra], ignore_index=True).sort_values(["engine_id", "bucket"], kind="stable")
    return b.reset_index(drop=True)


@dataclass(frozen=True)
class TierView:
    """The report's ``kv_tiers``, each tier over time, and vLLM's residency vs kvscope's model."""

    kv_tiers: list[dict[str, Any]]
    series: list[tiers.TierSeries]
    residency: list[dict[str, Any]]


def compute_tiers(path: str | Path) -> TierView:
    """Tiers and residency of a session."""
    with open_session(path) as session:
        return TierView(tiers.kv_tiers(session), tiers.tier_series(session, _start(session)),
                        residency.residency_check(session))


def compute_occupancy(path: str | Path) -> pd.DataFrame:
    """Per step: block usage and token occupancy (``t_s``; empty when not recorded)."""
    with open_session(path) as session:
        occ = engine_occupancy(session)
        if occ is None:
            return pd.DataFrame(columns=["t_s", "block_usage_frac", "token_occupancy_frac"])
        df = occ.steps.copy()
        df.insert(0, "t_s", df["t_unix_s"] - _start(session))
        return df


def compute_block_sizes(path: str | Path) -> list[whatif.BlockSizePoint] | str:
    """The block-size what-if, or why there is none (one line)."""
    with open_session(path) as session:
        try:
            return whatif.block_size_curve(session)
        except NotAnalysable as exc:
            return str(exc)


forensics_memo = FileMemo(compute_forensics)
tiers_memo = FileMemo(compute_tiers)
occupancy_memo = FileMemo(compute_occupancy)
block_sizes_memo = FileMemo(compute_block_sizes)


def request_preemptions(forensics: Forensics, request_id: str) -> pd.DataFrame:
    """The preemptions of one request (``request_id`` as in the ``requests`` table)."""
    t = forensics.table
    if t.empty:
        return t
    return t[t["request_key"].astype(str) == str(request_id)]
