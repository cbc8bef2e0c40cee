"""Diagnosis: turn a session into findings (code, severity, time range, message, recommendation).

The rules live in ``diag_memory`` (start-up/runtime OOM, GPU memory pressure), ``diag_kv``
(KV saturation, preemption storms, prefix thrash, queueing, over-provisioned KV), ``diag_tokens``
(prefixes shorter than a block) and ``diag_tiers`` (offload tiers: write-only, slow loads, too
small); every threshold they use is in ``thresholds``.
"""

from __future__ import annotations

from profiler.analysis.diagnosis import kv as diag_kv
from profiler.analysis.diagnosis import memory as diag_memory
from profiler.analysis.diagnosis import tiers as diag_tiers
from profiler.analysis.diagnosis import tokens as diag_tokens
from profiler.analysis.diagnosis.findings import CRITICAL, INFO, WARNING, Finding, engine_views
from profiler.session.reader import Session

__all__ = ["Finding", "diagnose", "CRITICAL", "WARNING", "INFO"]

_ORDER = {CRITICAL: 0, WARNING: 1, INFO: 2}


def diagnose(session: Session) -> list[Finding]:
    """All findings for ``session``, most severe first, then by time."""
    out: list[Finding] = list(diag_memory.session_rules(session))
    for view in engine_views(session):
        for rule in (*diag_kv.RULES, *diag_tokens.RULES, *diag_tiers.RULES):
            out.extend(rule(view, session))
    out.sort(key=lambda f: (_ORDER.get(f.severity, 3),
                            f.t_start_s if f.t_start_s is not None else float("inf")))
    return out
