"""Per-request swimlanes: each finished request's queued, prefill and decode spans (as vLLM reports
them), its preemptions, and the shared prompt prefix it starts with.

vLLM gives per request ``queued_s`` (arrival to first scheduled), ``prefill_s`` (to the first
token) and ``decode_s`` (first to last token); the frontend measured ``e2e_s``. A span the version
does not report is left out, and a request with none of them is one "in system" span. Preempted
spans are drawn where a source gives their times (``PREEMPTED_SOURCES``: the engine core's record
of each preemption, from the preemption until vLLM looked the request up again to resume it);
otherwise a request's preemption count marks its lane.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from dashboard.data.kv_whole import forensics_memo
from dashboard.data.session import SessionData

PHASES = ["queued", "prefill", "decode", "in system", "preempted"]
SPAN_COLUMNS = ["lane", "request_id", "phase", "t_s", "t_end_s", "prefix", "preemptions"]
MAX_LANES = 300
"""At most this many requests are drawn (the ones overlapping the view, earliest arrivals first)."""
NO_PREFIX = "no shared prefix"
NOT_RECORDED = "prefix not recorded"

_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
"""vLLM appends ``-<8 hex>`` to a request id internally (prompt-block rows carry it)."""

PreemptedSource = Callable[[SessionData], pd.DataFrame]


def recorded_preemptions(data: SessionData) -> pd.DataFrame:
    """Each preemption the engine core recorded: ``request_id`` (as in ``requests``), ``t_s`` (the
    preemption) and ``t_end_s`` (the resume: vLLM's prefix-cache lookup for the request; NaN where
    none was counted, e.g. prefix caching off). Empty without a per-preemption record."""
    table = forensics_memo(data.path).table
    if table.empty:
        return pd.DataFrame(columns=["request_id", "t_s", "t_end_s"])
    return pd.DataFrame({"request_id": table["request_key"].astype(str),
                         "t_s": pd.to_numeric(table["t_s"], errors="coerce"),
                         "t_end_s": pd.to_numeric(table["resumed_s"], errors="coerce")})


PREEMPTED_SOURCES: list[PreemptedSource] = [recorded_preemptions]
"""Sources of preempted spans: frames with ``request_id``, ``t_s``, ``t_end_s`` (s from session
start; ``t_end_s`` NaN: the resume was not recorded)."""


def prefix_groups(prompt_blocks: pd.DataFrame) -> dict[str, str]:
    """request id (without vLLM's suffix) -> "prefix A" / "prefix B" ... by the first prompt block
    shared with another request (most common first); requests whose first block is their own get
    ``NO_PREFIX``."""
    if prompt_blocks.empty:
        return {}
    first = prompt_blocks["block_hashes"].map(
        lambda b: int(np.frombuffer(b[:8], dtype="<i8")[0]) if isinstance(b, bytes | bytearray) and len(b) >= 8
        else None)
    rid = prompt_blocks["request_id"].astype(str).str.replace(_SUFFIX, "", regex=True)
    counts = first.value_counts()
    shared = [h for h, n in counts.items() if n >= 2]
    names = {h: f"prefix {_letters(i)}" for i, h in enumerate(shared)}
    return {r: (names.get(h, NO_PREFIX) if h is not None else NO_PREFIX) for r, h in zip(rid, first, strict=True)}


def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def request_spans(requests: pd.DataFrame, groups: dict[str, str], t0_s: float, t1_s: float,
                  preempted: pd.DataFrame | None = None, max_lanes: int = MAX_LANES) -> pd.DataFrame:
    """Spans of the requests overlapping [t0_s, t1_s] (``SPAN_COLUMNS``), one lane per request in
    arrival order; ``frame.attrs["hidden"]`` counts the requests left out beyond ``max_lanes``."""
    r = requests.dropna(subset=["t_arrival_s", "t_finished_s"])
    r = r[(r["t_finished_s"] >= t0_s) & (r["t_arrival_s"] <= t1_s)].sort_values("t_arrival_s", kind="stable")
    hidden = max(len(r) - max_lanes, 0)
    r = r.head(max_lanes).reset_index(drop=True)
    rows: list[dict[str, object]] = []
    for lane, q in enumerate(r.itertuples(index=False)):
        rid = str(q.request_id)
        prefix = groups.get(_SUFFIX.sub("", rid), NOT_RECORDED) if groups else NOT_RECORDED
        pre = q.preemptions if "preemptions" in r and pd.notna(q.preemptions) else np.nan
        base = {"lane": lane, "request_id": rid, "prefix": prefix, "preemptions": pre}
        t = float(q.t_arrival_s)
        parts = [(p, getattr(q, f"{p}_s", np.nan)) for p in ("queued", "prefill", "decode")]
        if all(pd.isna(v) for _, v in parts):
            rows.append(base | {"phase": "in system", "t_s": t, "t_end_s": float(q.t_finished_s)})
            continue
        for phase, length in parts:
            if pd.isna(length):
                continue
            rows.append(base | {"phase": phase, "t_s": t, "t_end_s": t + float(length)})
            t += float(length)
    out = pd.DataFrame(rows, columns=SPAN_COLUMNS)
    if preempted is not None and not preempted.empty and not out.empty:
        lanes = out.drop_duplicates("request_id").set_index("request_id")
        p = preempted[preempted["request_id"].astype(str).isin(lanes.index)]
        if not p.empty:
            extra = pd.DataFrame({
                "lane": lanes.loc[p["request_id"].astype(str), "lane"].to_numpy(),
                "request_id": p["request_id"].astype(str).to_numpy(), "phase": "preempted",
                "t_s": p["t_s"].to_numpy(float), "t_end_s": p["t_end_s"].to_numpy(float),
                "prefix": lanes.loc[p["request_id"].astype(str), "prefix"].to_numpy(),
                "preemptions": lanes.loc[p["request_id"].astype(str), "preemptions"].to_numpy()})
            out = pd.concat([out, extra], ignore_index=True)
    out.attrs["hidden"] = hidden
    return out


def session_spans(data: SessionData, requests: pd.DataFrame, t0_s: float, t1_s: float) -> pd.DataFrame:
    """``request_spans`` of a session, prefix groups from its prompt-block hashes and preempted
    spans from the registered sources."""
    with data.open() as session:
        blocks = session.table("prompt_blocks")
    parts = [src(data) for src in PREEMPTED_SOURCES]
    parts = [p for p in parts if p is not None and not p.empty]
    preempted = pd.concat(parts, ignore_index=True) if parts else None
    return request_spans(requests, prefix_groups(blocks), t0_s, t1_s, preempted)
