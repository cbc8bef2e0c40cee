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
    rep.add_argument("--last-s", type=float, default=None, metavar="SECONDS",
                     help="report only the session's last SECONDS of data (what the dashboard's "
                          "Live page shows for that window)")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the session's summary (text or JSON); several sessions are reported together."""
    if len(args.session) == 1 and args.json and args.last_s is None:
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
        if args.last_s is not None:
            from profiler.errors import UserError

            raise UserError("--last-s reports one session's window: give one session")
        return _report_set(args)
    if args.last_s is not None:
        report = _window_report(args.session[0], args.last_s)
    else:
        with open_session(args.session[0]) as session:
            report, _ = report_and_findings(session)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_text(report))
    return 0


def _window_report(path: str, last_s: float) -> dict[str, Any]:
    """The report of the session's last ``last_s`` seconds of data (the Live page's window)."""
    from profiler.analysis.diagnosis import diagnose
    from profiler.analysis.live import window_bounds
    from profiler.analysis.report import build_report
    from profiler.errors import UserError
    from profiler.session.reader import open_session

    if not last_s > 0:
        raise UserError(f"--last-s must be a positive number of seconds, not {last_s:g}")
    with open_session(path) as session:
        window = window_bounds(session, last_s)
    with open_session(path, window=window) as session:
        return build_report(session, findings=[f.as_dict() for f in diagnose(session)])


def _report_set(args: argparse.Namespace) -> int:
    """Many sessions: the good ones are reported, each bad one is one stderr line (exit 2)."""
    from profiler.analysis.report_set import build_report_set, format_text

    obj = build_report_set(list(args.session))
    for line in obj["errors"]:
        print(f"kvscope: {line}", file=sys.stderr)
    if obj["reports"]:
        print(json.dumps(obj, indent=2, allow_nan=False) if args.json else format_text(obj))
    return 2 if obj["errors"] else 0
