"""A session's report and findings through its stored summaries (``session/summaries.py``).

A large session (``STORE_MIN_STEPS`` steps or more) whose summaries are missing or behind gets them
built once, with a progress line, and stored in the file; its report with the findings is stored
too, keyed by the data version, so the next open reads them back instead of scanning millions of
steps. Small sessions are computed as always (a fraction of a second) and never written to.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import sys
import time
import zlib
from typing import Any

import numpy as np
import pandas as pd

from profiler.analysis import preemption
from profiler.analysis.diagnosis import diagnose
from profiler.analysis.report import build_report, step_totals
from profiler.analysis.whatif import MissRatioCurve, SessionPoint, WhatIf, analyse
from profiler.progress import progress_line
from profiler.session import summaries
from profiler.session.reader import Session
from profiler.units import printable

Report = tuple[dict[str, Any], list[dict[str, Any]]]
CACHE_NAME = "report"


def is_large(session: Session) -> bool:
    """True for sessions whose summaries are worth storing."""
    return summaries.max_rowid(session.db, "steps") >= summaries.STORE_MIN_STEPS


def prepare(session: Session, quiet: bool = False) -> bool:
    """Make a large session's summaries current (built and stored once); True when they are."""
    if summaries.up_to_date(session.db):
        return True
    if not is_large(session):
        return False
    label = printable(f"kvscope: {session.path.name}")
    progress = None if quiet else progress_line(f"{label}: building summaries (once; stored in "
                                                "the session)")
    ok = summaries.build_and_store(str(session.path), progress)
    if not ok and not quiet:
        print(f"{label}: cannot store summaries (file or folder not writable); reading it "
              "whole", file=sys.stderr)
    session._notes = None
    return ok and summaries.up_to_date(session.db)


def _stored_version(session: Session, quiet: bool = True) -> str | None:
    """The data version under which a large session's results are stored (None: a small session,
    never written to, or summaries that cannot be made current: its results are computed)."""
    if not prepare(session, quiet) or not is_large(session):
        return None
    return summaries.data_version(session.db)


def report_and_findings(session: Session, quiet: bool = False) -> Report:
    """``build_report`` with ``diagnose``'s findings, from the session's cache when current."""
    version = _stored_version(session, quiet)
    if version is not None:
        hit = summaries.cached(session.db, CACHE_NAME, version)
        if hit is not None:
            report = json.loads(hit)
            report["session"]["path"] = str(session.path)
            return report, report["findings"]
    started = time.perf_counter()
    if version is not None and not quiet:
        print(printable(f"kvscope: {session.path.name}: diagnosing "
                        f"{summaries.max_rowid(session.db, 'steps'):,} steps (once; stored)"),
              file=sys.stderr, flush=True)
    findings = [f.as_dict() for f in diagnose(session)]
    # a large session's preemption forensics are stored with it (the Timeline reads them)
    pre = preemptions(session) if version is not None else None
    report = build_report(session, findings=findings, preemptions=pre)
    if version is not None:
        stored = summaries.store_cached(str(session.path), CACHE_NAME, version,
                                        json.dumps(report, allow_nan=False))
        if stored and not quiet:
            print(printable(f"kvscope: {session.path.name}: report stored in "
                            f"{time.perf_counter() - started:.1f} s"), file=sys.stderr)
    return report, findings


WHATIF_CACHE = "whatif"


def _to_text(raw: bytes) -> str:
    """Bytes as stored in a JSON result: zlib-compressed, base64."""
    return base64.b64encode(zlib.compress(raw)).decode()


def _from_text(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def _pack(arr: np.ndarray) -> str:
    return _to_text(np.asarray(arr, dtype="<i8").tobytes())


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(_from_text(text), dtype="<i8").copy()


def whatif(session: Session) -> WhatIf:
    """``whatif.analyse`` of the busiest engine, read back from the session when a large session
    stored it at this data version (the replay's reuse distances: the miss-ratio curve); NotAnalysable
    (a ValueError) when the session has nothing to replay."""
    version = _stored_version(session)
    if version is not None:
        hit = summaries.cached(session.db, WHATIF_CACHE, version)
        if hit is not None:
            o = json.loads(hit)
            c = o["curve"]
            curve = MissRatioCurve(c["block_size"], c["query_tokens"], c["reserved_blocks"],
                                   _unpack(c["cum_hit_tokens"]), c["compulsory_hit_tokens"],
                                   _unpack(c["request_max_distance"]), c["min_blocks"],
                                   c["source"])
            a = o["actual"]
            counts = tuple(o["counts"]) if o["counts"] else None
            return WhatIf(o["engine_id"], None, curve, SessionPoint(a["num_blocks"], a["hit_rate"]),
                          counts)  # type: ignore[arg-type]
    w = analyse(session)
    if version is not None:
        c = w.curve
        obj = {"engine_id": w.engine_id,
               "counts": [w.request_count, w.access_count] if w.request_count is not None else None,
               "actual": {"num_blocks": w.actual.num_blocks, "hit_rate": w.actual.hit_rate},
               "curve": {"block_size": c.block_size, "query_tokens": c.query_tokens,
                         "reserved_blocks": c.reserved_blocks,
                         "cum_hit_tokens": _pack(c.cum_hit_tokens),
                         "compulsory_hit_tokens": c.compulsory_hit_tokens,
                         "request_max_distance": _pack(c.request_max_distance),
                         "min_blocks": c.min_blocks, "source": c.source}}
        summaries.store_cached(str(session.path), WHATIF_CACHE, version, json.dumps(obj))
    return w


PREEMPTION_CACHE = "preemption"


def preemptions(session: Session) -> preemption.PreemptionSummary:
    """``preemption.summarize`` with the report's preemption count, its table with ``waiting``
    (requests waiting at each preemption, ``preemption.waiting_at``); a large session's is stored
    at this data version and read back (the table as Parquet), so a page of a day-long session
    does not read its requests, preemptions and steps whole."""
    version = _stored_version(session)
    if version is not None:
        hit = summaries.cached(session.db, PREEMPTION_CACHE, version)
        if hit is not None:
            o = json.loads(hit)
            table = pd.read_parquet(io.BytesIO(_from_text(o["table"])))
            return preemption.PreemptionSummary(
                o["count"], o["requests"], o["recomputed_tokens"], o["recompute_s_est"],
                o["worst_request"], table, o["prefill_tokens_per_s"], tuple(o["notes"]))
    s = preemption.summarize(session, step_totals(session)[1])
    s = dataclasses.replace(s, table=s.table.assign(waiting=preemption.waiting_at(session, s.table)))
    if version is not None:
        buf = io.BytesIO()
        s.table.to_parquet(buf, index=False)
        obj = {**s.as_json(), "prefill_tokens_per_s": s.prefill_tokens_per_s,
               "notes": list(s.notes), "table": _to_text(buf.getvalue())}
        summaries.store_cached(str(session.path), PREEMPTION_CACHE, version, json.dumps(obj))
    return s
