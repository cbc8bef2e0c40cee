"""A fleet of servers in one session (``kvscope attach URL URL ...``): one row per server, worst first.

A server is one ``engines.label`` (its URL; a data-parallel server has several engines, added up).
Its numbers come from one aggregate pass over its ``steps`` and ``gaps`` rows. *Worst first*:
servers that lost data first (seconds inside ``gaps``), then by the share of intervals spent
saturated (KV usage ≥ 95 % with requests waiting), then preemptions per minute, then the mean
number of waiting requests, then the KV peak. A value the server did not report stays NaN (shown
as not measured), never 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data.session import FileMemo
from profiler.session import summaries as sm
from profiler.session.reader import Session, open_session

SATURATED_KV_FRAC = sm.SATURATED_KV_FRAC
"""KV usage at or above which an interval with requests waiting counts as saturated."""

RANK_KEYS = ("missing_s", "saturated_frac", "preemptions_per_min", "waiting_mean", "kv_peak_frac")
"""The worst-first order: each compared only when the ones before it tie."""

_SERVER = "COALESCE(e.label, 'engine ' || e.engine_id)"
"""A server's name: its URL (attach), else its engine (a recorded session's engines)."""

def _summed(c: str) -> str:
    return f"CASE WHEN SUM(r.{c}_n) > 0 THEN SUM(r.{c}_sum) END"


_ROLLED = f"""
SELECT {_SERVER}, SUM(r.n_scheduled), MIN(r.t_lo), MAX(r.t_hi), MAX(r.kv_usage_frac_max),
       SUM(r.kv_usage_frac_sum) / SUM(r.kv_usage_frac_n), SUM(r.running_sum) * 1.0 / SUM(r.running_n),
       SUM(r.waiting_sum) * 1.0 / SUM(r.waiting_n), MAX(r.waiting_max), {_summed('preemptions')},
       {_summed('prefix_queries_tokens')}, {_summed('prefix_hits_tokens')},
       {_summed('generation_tokens')}, SUM(r.n_saturated), COUNT(DISTINCT e.engine_id)
FROM engines e LEFT JOIN {sm.ROLLUP} r ON r.engine_id = e.engine_id AND r.level = {sm.LEVELS_S[-1]!r}
GROUP BY 1 ORDER BY MIN(e.engine_id)
"""
"""The same numbers from the session's stored rollups (a day-long fleet costs no scan)."""

_STEPS = f"""
SELECT {_SERVER}, COUNT(s.running), MIN(s.t_unix_s), MAX(s.t_unix_s), MAX(s.kv_usage_frac),
       AVG(s.kv_usage_frac), AVG(s.running), AVG(s.waiting), MAX(s.waiting), SUM(s.preemptions),
       SUM(s.prefix_queries_tokens), SUM(s.prefix_hits_tokens), SUM(s.generation_tokens),
       SUM(CASE WHEN s.kv_usage_frac >= {SATURATED_KV_FRAC} AND s.waiting > 0 THEN 1.0 ELSE 0.0 END),
       COUNT(DISTINCT e.engine_id)
FROM engines e LEFT JOIN steps s ON s.engine_id = e.engine_id
GROUP BY 1 ORDER BY MIN(e.engine_id)
"""

COLUMNS = ("server", "engines", "intervals", "missing_s", "saturated_frac", "preemptions_per_min",
           "waiting_mean", "waiting_max", "running_mean", "kv_peak_frac", "kv_mean_frac",
           "prefix_hit_rate", "generation_per_s", "engine_ids")


def fleet_table(session: Session) -> pd.DataFrame:
    """One row per server of the session, worst first (see the module docstring)."""
    rows = session.rows(_ROLLED if sm.up_to_date(session.db) else _STEPS)
    ids: dict[str, list[int]] = {}
    for server, eid in session.rows(f"SELECT {_SERVER}, e.engine_id FROM engines e "
                                    "ORDER BY e.engine_id"):
        ids.setdefault(str(server), []).append(int(eid))
    missing = {str(server): float(secs or 0.0) for server, secs in session.rows(
        f"SELECT {_SERVER}, SUM(MAX(g.t_end_unix_s - g.t_start_unix_s, 0)) FROM gaps g "
        "JOIN engines e ON e.engine_id = g.engine_id WHERE g.source = 'metrics' GROUP BY 1")}
    out = []
    for (server, n, t0, t1, kv_peak, kv_mean, run_mean, wait_mean, wait_max, pre, q, h, gen, sat,
         engines) in rows:
        server = str(server)
        span_s = (t1 - t0) if n and t1 is not None and t0 is not None and t1 > t0 else None
        out.append({
            "server": server, "engines": int(engines), "intervals": int(n or 0),
            "missing_s": missing.get(server, 0.0),
            "saturated_frac": (sat / n) if n else np.nan,
            "preemptions_per_min": (pre / span_s * 60) if pre is not None and span_s else np.nan,
            "waiting_mean": _num(wait_mean), "waiting_max": _num(wait_max),
            "running_mean": _num(run_mean), "kv_peak_frac": _num(kv_peak),
            "kv_mean_frac": _num(kv_mean),
            "prefix_hit_rate": (h / q) if q and h is not None and h <= q else np.nan,
            "generation_per_s": (gen / span_s) if gen is not None and span_s else np.nan,
            "engine_ids": ids.get(server, []),
        })
    df = pd.DataFrame(out, columns=list(COLUMNS))
    if df.empty:
        return df
    order = np.lexsort([-df[k].fillna(-np.inf).to_numpy(dtype=float) for k in reversed(RANK_KEYS)])
    return df.iloc[order].reset_index(drop=True)


def _num(value: object) -> float:
    return float(value) if value is not None else np.nan


def compute_fleet(path: str | Path) -> pd.DataFrame:
    """``fleet_table`` of the session at ``path``."""
    with open_session(path) as session:
        return fleet_table(session)


fleet_memo = FileMemo(compute_fleet)
"""``compute_fleet`` remembered per (path, size, mtime) in this process."""
