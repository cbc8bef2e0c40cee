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
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the session's summary (text or JSON)."""
    # Imported here: `kvscope record` parses the same CLI and should not pay for pandas.
    from profiler.analysis.diagnosis import diagnose
    from profiler.analysis.report import build_report, format_text
    from profiler.session.reader import open_session

    session = open_session(args.session)
    report = build_report(session, findings=[f.as_dict() for f in diagnose(session)])
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_text(report))
    return 0
