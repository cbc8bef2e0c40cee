"""``kvscope export SESSION --format parquet|perfetto|html --out PATH``: a session outside kvscope."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from profiler.errors import UserError
from profiler.export import FORMATS
from profiler.units import printable

EPILOG = """\
parquet   PATH is a folder: one TABLE.parquet per session table (pyarrow; NULL stays null)
perfetto  PATH is a trace file (open it in https://ui.perfetto.dev): KV usage, running and
          waiting, GPU memory as counter tracks; requests as slices; preemptions and OOMs as
          instants; intervals without data as gap slices
html      PATH is one HTML file with the key numbers, findings and charts; it opens offline
          (the chart library is inside the file)
"""


def add_parser(sub: Any) -> None:
    """Register ``kvscope export``."""
    p = sub.add_parser("export", help="write a session as Parquet, a Perfetto trace or an HTML report",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("session")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output folder (parquet) or file (perfetto, html)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Export the session; one summary line on stderr."""
    from profiler.session.reader import open_session

    out = Path(args.out)
    if args.format != "parquet":
        if out.is_dir():
            raise UserError(f"{out}: is a folder; --format {args.format} writes one file")
        if not out.parent.is_dir():
            raise UserError(f"{out.parent}: no such folder")
    started = time.perf_counter()
    with open_session(args.session) as session:
        if args.format == "parquet":
            from profiler.export.parquet import export_parquet

            written = export_parquet(session, out)
            what = f"{len(written)} Parquet files ({sum(w.rows for w in written):,} rows)"
        elif args.format == "perfetto":
            from profiler.export.perfetto_trace import export_perfetto

            stats = export_perfetto(session, out)
            what = (f"Perfetto trace: {stats.packets:,} packets, {stats.counter_samples:,} counter "
                    f"samples, {stats.request_slices:,} requests on {stats.lanes:,} lanes, "
                    f"{stats.preemption_instants:,} preemptions, {stats.event_instants:,} events, "
                    f"{stats.gap_slices:,} gaps")
        else:
            from profiler.export.html_report import export_html

            report = export_html(session, out)
            what = f"HTML report ({len(report['findings'])} findings)"
    print(printable(f"kvscope: {out}: {what} in {time.perf_counter() - started:.1f} s"),
          file=sys.stderr)
    return 0
