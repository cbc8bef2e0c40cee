"""``kvscope report A B C ...``: many sessions (servers, days) reported together.

Each session gets its own ``build_report`` object, unchanged; ``combined`` adds them up where
adding means something: counts and token sums add, the KV peak is the highest, the prefix hit rate
is total hits over total queries, and latency percentiles are taken over every finished request of
every session (not averaged per session). A session that cannot be opened is one line in
``errors`` and costs none of the others.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from profiler.analysis.summarized import report_and_findings
from profiler.errors import KvscopeError
from profiler.session.reader import open_session
from profiler.units import fmt, fmt_gib, json_safe, percentile, printable

REPORT_SET_VERSION = 1


def build_report_set(paths: list[str | Path]) -> dict[str, Any]:
    """The ``kvscope report A B ... --json`` object: ``reports`` (one per readable session, in the
    order given), ``combined`` and ``errors`` (one line per session that could not be read)."""
    reports: list[dict[str, Any]] = []
    errors: list[str] = []
    ttft: list[float] = []
    e2e: list[float] = []
    for path in paths:
        try:
            with open_session(path) as session:
                report, _ = report_and_findings(session)
                for a, b in session.rows("SELECT ttft_s, e2e_s FROM requests"):
                    if a is not None:
                        ttft.append(a)
                    if b is not None:
                        e2e.append(b)
        except KvscopeError as exc:
            errors.append(printable(exc))
            continue
        reports.append(report)
    return json_safe({"kvscope_report_set": REPORT_SET_VERSION, "reports": reports,
                      "combined": combine(reports, ttft, e2e), "errors": errors})


def _sum(values: list[Any]) -> int | float | None:
    """Sum of the measured values; None when none was measured (never a null counted as 0)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def combine(reports: list[dict[str, Any]], ttft_s: list[float],
            e2e_s: list[float]) -> dict[str, Any]:
    """The sessions' numbers added up (see the module docstring)."""
    q = _sum([r["prefix_cache"]["queries_tokens"] for r in reports])
    h = _sum([r["prefix_cache"]["hits_tokens"] for r in reports])
    peaks = [r["kv_cache"]["peak_usage_frac"] for r in reports]
    starts = [r["session"]["started_at_unix_s"] for r in reports]
    ends = [r["session"]["started_at_unix_s"] + r["session"]["duration_s"] for r in reports
            if r["session"]["started_at_unix_s"] is not None and r["session"]["duration_s"] is not None]
    known_starts = [s for s in starts if s is not None]
    findings: Counter[str] = Counter(f["code"] for r in reports for f in r["findings"])
    return {
        "sessions": len(reports),
        "engines": sum(r["engines"] for r in reports),
        "started_at_unix_s": min(known_starts) if known_starts else None,
        "ended_at_unix_s": max(ends) if ends else None,
        "recorded_s": _sum([r["session"]["duration_s"] for r in reports]),
        "complete": all(r["session"]["complete"] for r in reports),
        "steps": sum(r["steps"] for r in reports),
        "preemptions": _sum([r["preemptions"] for r in reports]),
        "requests_finished": sum(r["requests_finished"] for r in reports),
        "prefix_cache": {"queries_tokens": q, "hits_tokens": h,
                         "hit_rate": h / q if q and h is not None and h <= q else None},
        "num_gpu_blocks": _sum([r["engine"]["num_gpu_blocks"] for r in reports]),
        "kv_cache": {"peak_usage_frac": max((p for p in peaks if p is not None), default=None)},
        "peak_gpu_used_bytes": max((g["peak_used_bytes"] for r in reports for g in r["gpus"]
                                    if g["peak_used_bytes"] is not None), default=None),
        "latency_s": {f"{name}_p{int(p * 100)}": percentile(values, p)
                      for name, values in (("ttft", ttft_s), ("e2e", e2e_s))
                      for p in (0.5, 0.95, 0.99)},
        "findings": dict(sorted(findings.items())),
    }


_ROWS: tuple[tuple[str, Any], ...] = (
    ("duration", lambda r: fmt(r["session"]["duration_s"], "{:,.1f} s")),
    ("complete", lambda r: "yes" if r["session"]["complete"] else "NO"),
    ("steps", lambda r: f"{r['steps']:,}"),
    ("requests finished", lambda r: f"{r['requests_finished']:,}"),
    ("preemptions", lambda r: fmt(r["preemptions"], "{:,}")),
    ("KV blocks", lambda r: fmt(r["engine"]["num_gpu_blocks"], "{:,}")),
    ("KV peak", lambda r: fmt(r["kv_cache"]["peak_usage_frac"], "{:.0%}")),
    ("prefix hit rate", lambda r: fmt(r["prefix_cache"]["hit_rate"], "{:.1%}")),
    ("TTFT p95", lambda r: fmt(r["latency_s"]["ttft_p95"], "{:.3f} s")),
    ("e2e p95", lambda r: fmt(r["latency_s"]["e2e_p95"], "{:.3f} s")),
    ("peak GPU memory", lambda r: fmt_gib(max((g["peak_used_bytes"] or 0 for g in r["gpus"]),
                                              default=None)) if r["gpus"] else fmt(None, "")),
    ("findings", lambda r: f"{len(r['findings'])}"),
)


def format_text(obj: dict[str, Any]) -> str:
    """A table with one column per session and a combined column, then each session's findings."""
    reports, c = obj["reports"], obj["combined"]
    names = [Path(r["session"]["path"]).stem for r in reports]
    combined = {
        "duration": fmt(c["recorded_s"], "{:,.1f} s recorded"),
        "complete": "yes" if c["complete"] else "NO",
        "steps": f"{c['steps']:,}", "requests finished": f"{c['requests_finished']:,}",
        "preemptions": fmt(c["preemptions"], "{:,}"),
        "KV blocks": fmt(c["num_gpu_blocks"], "{:,} in all"),
        "KV peak": fmt(c["kv_cache"]["peak_usage_frac"], "{:.0%}"),
        "prefix hit rate": fmt(c["prefix_cache"]["hit_rate"], "{:.1%}"),
        "TTFT p95": fmt(c["latency_s"]["ttft_p95"], "{:.3f} s"),
        "e2e p95": fmt(c["latency_s"]["e2e_p95"], "{:.3f} s"),
        "peak GPU memory": fmt_gib(c["peak_gpu_used_bytes"]),
        "findings": f"{sum(c['findings'].values())}",
    }
    cols = [*names, f"all {len(reports)}"]
    cells = [[get(r) for r in reports] + [combined[label]] for label, get in _ROWS]
    widths = [max(len(col), *(len(row[i]) for row in cells)) for i, col in enumerate(cols)]
    label_w = max(len(label) for label, _ in _ROWS)
    lines = [" " * label_w + "  " + "  ".join(col.rjust(w) for col, w in zip(cols, widths, strict=True))]
    for (label, _), row in zip(_ROWS, cells, strict=True):
        lines.append(label.ljust(label_w) + "  "
                     + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    if c["findings"]:
        lines.append("findings  " + ", ".join(f"{k} ×{n}" for k, n in c["findings"].items()))
    for name, r in zip(names, reports, strict=True):
        for f in r["findings"]:
            lines.append(f"{name}: [{f['severity'].upper()}] {f['code']}: {f['message']}")
    for e in obj["errors"]:
        lines.append(f"not read: {e}")
    return "\n".join(printable(line) for line in lines)
