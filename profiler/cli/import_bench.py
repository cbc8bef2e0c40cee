"""``kvscope import-bench FILE --session S``: a ``vllm bench serve`` result as a session."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``kvscope import-bench``."""
    p = sub.add_parser(
        "import-bench", help="import `vllm bench serve --save-result --save-detailed` results",
        description="Import the client-side results of vLLM's serving benchmark (any "
                    "OpenAI-compatible server) into a new session, to compare its latency "
                    "percentiles and throughput with a vLLM session on the Compare page.")
    p.add_argument("file", help="the JSON written by --save-result --save-detailed")
    p.add_argument("--session", required=True, help="the new session file to write")
    p.add_argument("--label", default=None,
                   help="what was measured (default: the file's label or backend)")
    p.set_defaults(func=cmd_import_bench)


def cmd_import_bench(args: argparse.Namespace) -> int:
    """Write the session and say what it holds."""
    from profiler.attach.bench_import import import_bench

    done = import_bench(args.file, args.session, args.label)
    extra = f", {done.skipped_values} values not numbers (stored as null)" if done.skipped_values else ""
    print(f"kvscope: {done.path}: {done.requests} requests imported, {done.failed} failed{extra}")
    return 0
