"""``kvscope report SESSION [--json]``: the session's summary and findings."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``kvscope report``."""
    rep = sub.add_parser("report", help="summarise a session")
    rep.add_argument("session")
    rep.add_argument("--json", action="store_true", help="print the JSON report")
    rep.add_argument("--last-s", type=float, default=None, metavar="SECONDS",
                     help="report only the session's last SECONDS of data (what the dashboard's "
                          "Live page shows for that window)")
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the session's summary (text or JSON)."""
    # Imported here: `kvscope record` parses the same CLI and should not pay for pandas.
    from profiler.analysis.diagnosis import diagnose
    from profiler.analysis.report import build_report, format_text
    from profiler.session.reader import open_session

    session = open_session(args.session)
    if args.last_s is not None:
        from profiler.analysis.live import window_bounds
        from profiler.errors import UserError

        if not args.last_s > 0:
            raise UserError(f"--last-s must be a positive number of seconds, not {args.last_s:g}")
        window = window_bounds(session, args.last_s)
        if window is not None:
            session.close()
            session = open_session(args.session, window=window)
    report = build_report(session, findings=[f.as_dict() for f in diagnose(session)])
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_text(report))
    return 0
