"""The ``kvscope`` command: one module per subcommand, registered in ``COMMANDS``.

Errors the user can fix (``profiler.errors.KvscopeError``: a bad session, an unreachable endpoint)
print one line and exit 2; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from profiler.cli import attach, import_bench, record, report, ui, whatif
from profiler.errors import KvscopeError
from profiler.units import printable

COMMANDS = (record, report, whatif, attach, import_bench, ui)
"""Subcommand modules, each with ``add_parser(subparsers)``; listed in ``kvscope --help`` order."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="kvscope", description="GPU-memory and KV-cache profiler for vLLM")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KvscopeError as exc:
        # one line, whatever the file's name or contents: control characters become spaces
        print(f"kvscope: {printable(exc)}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        print(f"kvscope: damaged session file ({printable(first)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kvscope report ... | head`
        sys.stderr.close()
        return 0
