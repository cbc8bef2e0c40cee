"""``kvscope record --session PATH -- COMMAND``: run a vLLM program with recording on."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from profiler.errors import UserError
from profiler.recorder import context, options


def add_parser(sub: Any) -> None:
    """Register ``kvscope record``."""
    r = sub.add_parser("record", help="run a vLLM program and record every engine it creates")
    r.add_argument("--session", required=True, help="session file to write (SQLite)")
    r.add_argument("--nvml-interval-ms", type=int, default=None, help="GPU sampling period (default 100)")
    r.add_argument("--kv-events", action="store_true",
                   help="store the engine's KV-cache events in the session (no socket: vLLM's null "
                        "publisher when the program configured none)")
    r.add_argument("--kv-cache-metrics", nargs="?", type=float, const=1.0, default=None,
                   metavar="SAMPLE", help="turn on vLLM's block residency sampling for this fraction "
                                          "of blocks (default 1.0) and store every sampled eviction")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    r.set_defaults(func=cmd_record)


def cmd_record(args: argparse.Namespace) -> int:
    """Run COMMAND with recording on; exit with its exit code."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("nothing to run: kvscope record --session PATH -- COMMAND [ARGS...]")
    sample = args.kv_cache_metrics
    if sample is not None and not 0 < sample <= 1:
        raise UserError(f"--kv-cache-metrics {sample:g}: the sampled fraction must be in (0, 1]")
    folder = args.session.endswith(("/", os.sep)) or os.path.isdir(args.session)
    path = Path(args.session).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ[context.ENV_SESSION] = context.session_arg(path, folder)
    os.environ.pop(context.ENV_OWNER_PID, None)
    if args.kv_events:
        os.environ[options.ENV_KV_EVENTS] = "1"
    if sample is not None:
        os.environ[options.ENV_KV_CACHE_METRICS] = repr(sample)
    if args.nvml_interval_ms is not None:
        os.environ[context.ENV_NVML_INTERVAL_MS] = str(args.nvml_interval_ms)
    w = context.writer()
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
        name = signal.Signals(signum).name
        try:  # first: errors the program logs while it stops come after this
            w.event("stop_signal", f"{name} passed on to the recorded program", signal=name)
        finally:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    if code != 0:
        w.event("exit", f"recorded program exited with code {code}", exit_code=code)
    context.finish_session(w, exit_code=code)
    return code if code >= 0 else 128 - code
