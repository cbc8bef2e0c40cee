"""The whole KV cache for the dashboard: preemption forensics, tiers, token occupancy, block sizes,
residency. Each computed once per file version (``FileMemo``); times as ``t_s`` from session start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dashboard.data.session import FileMemo
from profiler.analysis import preemption, residency, tiers, whatif
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
    """Preemption forensics of a session (the report's count: vLLM's step counters)."""
    with open_session(path) as session:
        step_count = session.scalar("SELECT SUM(preemptions) FROM steps")
        s = preemption.summarize(session, step_count)
        table = s.table.copy()
        t0 = _start(session)
        table.insert(0, "t_s", pd.to_numeric(table["t_unix_s"], errors="coerce") - t0)
        table["resumed_s"] = pd.to_numeric(table["resumed_unix_s"], errors="coerce") - t0
        return Forensics(s.as_json(), table, s.prefill_tokens_per_s, bool(len(table)))


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
