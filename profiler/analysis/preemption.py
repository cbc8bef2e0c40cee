"""Preemption forensics: every preemption, what it discarded and what recomputing it cost.

The engine core records one ``preemptions`` row per preemption (``event`` = ``preempted``: the
request, its computed tokens discarded, blocks freed, KV usage before/after, the reason) and one
per prefix-cache lookup vLLM counted for a previously preempted request (``resumed``: tokens
queried and hit). A preemption's recompute is its resume's ``queries − hits`` (the tokens vLLM
prefilled again); with prefix caching off vLLM counts no lookups, and the whole sequence at the
preemption (prompt + output tokens) is recomputed. Seconds are estimated from the session's own
prefill rate (``prefill_rate``).

Sessions without engine-core rows (older recordings, attach) still get the count, and the
recomputed tokens from vLLM's own ``preempted_prefix_*`` step counters where those exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis.whatif import REQUEST_SUFFIX
from profiler.session.reader import Session

COLUMNS = ("engine_id", "t_unix_s", "request_id", "request_key", "reason", "computed_tokens",
           "prompt_tokens", "output_tokens", "blocks_freed", "kv_usage_before_frac",
           "kv_usage_after_frac", "resumed_unix_s", "queries_tokens", "hits_tokens",
           "recomputed_tokens", "recompute_estimated", "recompute_s_est", "nth")
"""Columns of ``preemption_table`` (units in the names; ``nth``: this request's 1st, 2nd, ...)."""


def request_key(ids: pd.Series) -> pd.Series:
    """Request ids without vLLM's internal ``-<8 hex>`` suffix (matches the ``requests`` table)."""
    return ids.astype(str).str.replace(REQUEST_SUFFIX, "", regex=True)


def prefill_rate(session: Session, engine_id: int | None = None) -> float | None:
    """Prompt tokens the engine prefilled per second while prefilling (None: not measurable).

    Tokens: finished requests' prompt tokens minus their prefix-cache hits. Time: the union of
    their prefill intervals (first scheduled to first token, vLLM's own ``prefill_s``), so
    requests prefilled together in one batch share the time.
    """
    where = "WHERE engine_id = ?" if engine_id is not None else ""
    r = session.table("requests", where, (engine_id,) if engine_id is not None else ())
    r = r.dropna(subset=["t_finished_unix_s", "e2e_s", "prefill_s", "prompt_tokens"])
    if r.empty:
        return None
    queued = r["queued_s"].fillna(0.0).to_numpy(dtype=float)
    start = r["t_finished_unix_s"].to_numpy(dtype=float) - r["e2e_s"].to_numpy(dtype=float) + queued
    end = start + r["prefill_s"].to_numpy(dtype=float)
    order = np.argsort(start)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in zip(start[order], end[order], strict=True):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    tokens = float((r["prompt_tokens"] - r["cached_tokens"].fillna(0)).clip(lower=0).sum())
    if busy <= 0 or tokens <= 0:
        return None
    return tokens / busy


def preemption_table(session: Session, rate: float | None = None) -> pd.DataFrame:
    """One row per recorded preemption with its resume paired (``COLUMNS``), in time order."""
    raw = session.table("preemptions", "ORDER BY t_unix_s, rowid")
    if raw.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    prefix_on = session.scalar("SELECT MAX(enable_prefix_caching) FROM engines")
    raw = raw.assign(request_key=request_key(raw["request_id"]))
    out: list[dict[str, Any]] = []
    for _, group in raw.groupby(["engine_id", "request_id"], dropna=False, sort=False):
        current: dict[str, Any] | None = None
        nth = 0
        for row in group.itertuples(index=False):
            if row.event == "preempted":
                if current is not None:
                    out.append(current)
                nth += 1
                current = {c: getattr(row, c, None) for c in COLUMNS if hasattr(row, c)}
                current.update(resumed_unix_s=None, queries_tokens=None, hits_tokens=None, nth=nth)
            elif row.event == "resumed" and current is not None:
                # the last counted lookup before the request runs again (0.2x counts retries too)
                current.update(resumed_unix_s=row.t_unix_s, queries_tokens=row.queries_tokens,
                               hits_tokens=row.hits_tokens)
        if current is not None:
            out.append(current)
    df = pd.DataFrame(out)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    q = pd.to_numeric(df["queries_tokens"], errors="coerce")
    h = pd.to_numeric(df["hits_tokens"], errors="coerce").fillna(0)
    recomputed = (q - h).clip(lower=0)
    whole = (pd.to_numeric(df["prompt_tokens"], errors="coerce")
             + pd.to_numeric(df["output_tokens"], errors="coerce").fillna(0))
    estimated = recomputed.isna() & (prefix_on == 0) & whole.notna()
    df["recomputed_tokens"] = recomputed.where(~estimated, whole)
    df["recompute_estimated"] = estimated
    rate = rate if rate is not None else prefill_rate(session)
    df["recompute_s_est"] = df["recomputed_tokens"] / rate if rate else np.nan
    return df[list(COLUMNS)].sort_values("t_unix_s", kind="stable").reset_index(drop=True)


def waiting_at(session: Session, table: pd.DataFrame) -> np.ndarray:
    """Requests waiting at each preemption of ``table``: its engine's last step at or before it
    (NaN: none)."""
    out = np.full(len(table), np.nan)
    if table.empty:
        return out
    steps = pd.read_sql_query("SELECT engine_id, t_unix_s, waiting FROM steps WHERE t_unix_s IS NOT NULL "
                              "ORDER BY t_unix_s", session.db)
    left = pd.DataFrame({"t_unix_s": pd.to_numeric(table["t_unix_s"], errors="coerce"),
                         "engine_id": table["engine_id"], "i": np.arange(len(table))})
    ok = left["t_unix_s"].notna()
    if steps.empty or not ok.any():
        return out
    m = pd.merge_asof(left[ok].sort_values("t_unix_s"), steps, on="t_unix_s", by="engine_id",
                      direction="backward")
    out[m["i"].to_numpy()] = pd.to_numeric(m["waiting"], errors="coerce").to_numpy(dtype=float)
    return out


@dataclass(frozen=True)
class PreemptionSummary:
    """The report's ``preemption`` object and the table behind it."""

    count: int | None
    requests: int | None
    recomputed_tokens: int | None
    recompute_s_est: float | None
    worst_request: dict[str, Any] | None
    table: pd.DataFrame
    prefill_tokens_per_s: float | None
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """``{"count", "requests", "recomputed_tokens", "recompute_s_est", "worst_request"}``."""
        return {"count": self.count, "requests": self.requests,
                "recomputed_tokens": self.recomputed_tokens, "recompute_s_est": self.recompute_s_est,
                "worst_request": self.worst_request}


def summarize(session: Session, step_count: int | None = None) -> PreemptionSummary:
    """Counts and recompute cost of every preemption in ``session``.

    ``step_count`` is the report's ``preemptions`` (vLLM's per-step counter summed): ``count`` is
    always that number, so every page shows one count; a recording whose engine-core rows
    disagree with it says so in ``notes``.
    """
    rate = prefill_rate(session)
    table = preemption_table(session, rate)
    notes: list[str] = []
    count = step_count if step_count is not None else (len(table) if len(table) else None)
    if len(table) and step_count is not None and len(table) != step_count:
        notes.append(f"preemption: the engine core recorded {len(table)} preemptions, vLLM's "
                     f"step counters {step_count}")
    if len(table):
        per = table.groupby("request_key").agg(
            preemptions=("request_key", "size"),
            recomputed_tokens=("recomputed_tokens", lambda x: x.sum(min_count=1)),
            request_id=("request_id", "first"))
        known = table["recomputed_tokens"].notna()
        recomputed = int(table.loc[known, "recomputed_tokens"].sum()) if known.any() else None
        worst_key = per.sort_values(["recomputed_tokens", "preemptions"], ascending=False,
                                    na_position="last").index[0]
        w = per.loc[worst_key]
        w_tokens = None if pd.isna(w["recomputed_tokens"]) else int(w["recomputed_tokens"])
        worst = {"request_id": str(worst_key), "preemptions": int(w["preemptions"]),
                 "recomputed_tokens": w_tokens,
                 "recompute_s_est": w_tokens / rate if w_tokens is not None and rate else None}
        return PreemptionSummary(count, int(len(per)), recomputed,
                                 recomputed / rate if recomputed is not None and rate else None,
                                 worst, table, rate, tuple(notes))
    # no engine-core rows: vLLM's counters only
    q, h = session.rows("SELECT SUM(preempted_prefix_queries_tokens), "
                        "SUM(preempted_prefix_hits_tokens) FROM steps")[0]
    recomputed = int(q - (h or 0)) if q is not None else None
    reqs = session.table("requests").dropna(subset=["preemptions"])
    requests = int((reqs["preemptions"] > 0).sum()) if not reqs.empty else None
    worst = None
    if requests:
        top = reqs.sort_values("preemptions", ascending=False).iloc[0]
        worst = {"request_id": str(top["request_id"]), "preemptions": int(top["preemptions"]),
                 "recomputed_tokens": None, "recompute_s_est": None}
    if count == 0:
        requests, worst = 0, None
    return PreemptionSummary(count, requests, recomputed,
                             recomputed / rate if recomputed is not None and rate else None,
                             worst, table, rate, tuple(notes))
