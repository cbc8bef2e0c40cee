"""The ``kvscope`` command: record, report, ui (and the subcommands other modules add).

Errors the user can fix (bad session, unreachable endpoint) print one line and exit non-zero;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from profiler import context
from profiler.schema import SessionFormatError


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def cmd_record(args: argparse.Namespace) -> int:
    """Run COMMAND with recording on; exit with its exit code."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("nothing to run: kvscope record --session PATH -- COMMAND [ARGS...]")
    path = Path(args.session).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ[context.ENV_SESSION] = str(path)
    os.environ.pop(context.ENV_OWNER_PID, None)
    if args.nvml_interval_ms is not None:
        os.environ[context.ENV_NVML_INTERVAL_MS] = str(args.nvml_interval_ms)
    try:
        w = context.writer()
    except SessionFormatError as exc:
        raise UserError(str(exc)) from exc
    assert w is not None
    context.claim_owner(command)
    context.register_process("recorder")
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        w.event("error", f"could not start {command[0]}: {exc}")
        context.finish_session(w, exit_code=127)
        raise UserError(f"could not start {command[0]}: {exc.strerror or exc}") from exc

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    if code != 0:
        w.event("exit", f"recorded program exited with code {code}", exit_code=code)
    context.finish_session(w, exit_code=code)
    return code if code >= 0 else 128 - code


def cmd_report(args: argparse.Namespace) -> int:
    """Print the session's summary (text or JSON)."""
    from profiler.diagnosis import diagnose
    from profiler.reader import open_session
    from profiler.report import build_report, format_text

    session = open_session(args.session)
    report = build_report(session, findings=[f.as_dict() for f in diagnose(session)])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the Streamlit dashboard on the given (or bundled) sessions."""
    from profiler.ui_launcher import launch

    return launch(args.sessions, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="kvscope", description="GPU-memory and KV-cache profiler for vLLM")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("record", help="run a vLLM program and record every engine it creates")
    r.add_argument("--session", required=True, help="session file to write (SQLite)")
    r.add_argument("--nvml-interval-ms", type=int, default=None, help="GPU sampling period (default 100)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    r.set_defaults(func=cmd_record)

    rep = sub.add_parser("report", help="summarise a session")
    rep.add_argument("session")
    rep.add_argument("--json", action="store_true", help="print the JSON report")
    rep.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="open the dashboard")
    ui.add_argument("sessions", nargs="*")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=8501)
    ui.set_defaults(func=cmd_ui)

    for extra in _extra_commands():
        extra(sub)
    return p


def _extra_commands() -> list:
    """Subcommands that live in their own modules (attach, whatif), added when importable."""
    out = []
    for mod_name in ("profiler.attach.cli", "profiler.whatif"):
        try:
            mod = __import__(mod_name, fromlist=["add_parser"])
        except ModuleNotFoundError:
            continue
        except Exception as exc:  # a broken optional subcommand must not take `record` down
            print(f"kvscope: {mod_name} unavailable: {exc!r}", file=sys.stderr)
            continue
        if hasattr(mod, "add_parser"):
            out.append(mod.add_parser)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, SessionFormatError) as exc:
        print(f"kvscope: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        print(f"kvscope: damaged session file ({first})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kvscope report ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # Run the imported module's main, so that `python -m profiler.cli` and subcommand modules
    # share one profiler.cli (and one UserError class).
    from profiler.cli import main as _main

    sys.exit(_main())
