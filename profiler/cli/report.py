"""``kvscope report SESSION [SESSION ...] [--json]``: the sessions' summary and findings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``kvscope report``."""
    rep = sub.add_parser("report", help="summarise a session (or several, side by side)")
    rep.add_argument("session", nargs="+",
                     help="session file; several: one column each and a combined column "
                          "(JSON: {kvscope_report_set, reports, combined, errors})")
    rep.add_argument("--json", action="store_true", help="print the JSON report")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the session's summary (text or JSON); several sessions are reported together."""
    if len(args.session) == 1 and args.json:
        # a large session's report, stored when it was first computed: no pandas, no scan
        from profiler.session.summaries import lookup_cached

        hit = lookup_cached(args.session[0], "report")
        if hit is not None:
            report = json.loads(hit)
            report["session"]["path"] = str(Path(args.session[0]))
            print(json.dumps(report, indent=2, allow_nan=False))
            return 0
    # Imported here: `kvscope record` parses the same CLI and should not pay for pandas.
    from profiler.analysis.report import format_text
    from profiler.analysis.summarized import report_and_findings
    from profiler.session.reader import open_session

    if len(args.session) > 1:
        return _report_set(args)
    with open_session(args.session[0]) as session:
        report, _ = report_and_findings(session)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_text(report))
    return 0


def _report_set(args: argparse.Namespace) -> int:
    """Many sessions: the good ones are reported, each bad one is one stderr line (exit 2)."""
    from profiler.analysis.report_set import build_report_set, format_text

    obj = build_report_set(list(args.session))
    for line in obj["errors"]:
        print(f"kvscope: {line}", file=sys.stderr)
    if obj["reports"]:
        print(json.dumps(obj, indent=2, allow_nan=False) if args.json else format_text(obj))
    return 2 if obj["errors"] else 0
