"""``kvscope whatif SESSION --blocks N [N ...]``: prefix-cache hit rate at other KV cache sizes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from profiler.errors import UserError
from profiler.units import fmt_pct, json_safe, printable


def format_text(obj: dict[str, Any]) -> str:
    """Human table of a ``predictions`` object."""
    a = obj["actual"]
    src = (f"{obj['requests']} requests" if obj["source"] == "prompt_blocks"
           else "estimated from KV events (re-stores only; no prediction below the session's size)")
    lines = [
        f"engine {obj['engine_id']}: {src}, {obj['query_tokens']} prompt tokens, "
        f"block size {obj['block_size']}",
        f"actual    {a['num_blocks']} blocks: measured hit rate {fmt_pct(a['hit_rate'])}, "
        f"model {fmt_pct(a['predicted_hit_rate'])}",
        f"unbounded cache: {fmt_pct(obj['max_hit_rate'])}"
        + (f" (90% of it from {obj['blocks_for_90pct_of_max']} blocks)"
           if obj["blocks_for_90pct_of_max"] else ""),
        f"{'blocks':>8} {'tokens':>10} {'predicted hit rate':>20}",
    ]
    for p in obj["predictions"]:
        rate = fmt_pct(p["hit_rate"]) if p["hit_rate"] is not None else "not predicted"
        lines.append(f"{p['num_blocks']:>8} {p['tokens']:>10} {rate:>20}")
    if obj.get("block_sizes") is not None:
        lines.append("same KV memory at other block sizes:")
        lines.append(f"{'block size':>10} {'blocks':>8} {'predicted':>10} {'unbounded':>10} "
                     f"{'measured':>9}")
        for b in obj["block_sizes"]:
            lines.append(f"{b['block_size']:>10} {b['num_blocks']:>8} {fmt_pct(b['hit_rate']):>10} "
                         f"{fmt_pct(b['max_hit_rate']):>10} {fmt_pct(b['measured_hit_rate']):>9}")
    return "\n".join(printable(line) for line in lines)


def cmd_whatif(args: argparse.Namespace) -> int:
    """``kvscope whatif SESSION --blocks N [N ...] [--json]``."""
    from profiler.analysis.whatif import analyse, predictions
    from profiler.session.reader import open_session

    if not args.blocks and args.block_sizes is None:
        raise UserError("kvscope whatif: give --blocks N [N ...] and/or --block-sizes [N ...]")
    if any(n < 1 for n in args.blocks or []):
        raise UserError("--blocks: cache sizes must be positive block counts")
    session = open_session(args.session)
    try:
        w = analyse(session, args.engine)
    except ValueError as exc:
        raise UserError(f"{args.session}: {exc}") from exc
    obj = predictions(w, list(args.blocks or []))
    if args.block_sizes is not None:
        from dataclasses import asdict

        from profiler.analysis.whatif import BLOCK_SIZES, block_size_curve

        sizes = args.block_sizes or list(BLOCK_SIZES)
        if any(n < 1 for n in sizes):
            raise UserError("--block-sizes: block sizes must be positive token counts")
        try:
            obj["block_sizes"] = [asdict(b) for b in block_size_curve(session, sizes, w.engine_id)]
        except ValueError as exc:
            raise UserError(f"{args.session}: {exc}") from exc
    print(json.dumps(json_safe(obj), indent=2, allow_nan=False) if args.json else format_text(obj))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``kvscope whatif`` on the CLI's subparsers."""
    p = sub.add_parser("whatif", help="predict the prefix-cache hit rate at other KV cache sizes")
    p.add_argument("session")
    p.add_argument("--blocks", type=int, nargs="+", default=None, metavar="N",
                   help="KV cache sizes to predict, in blocks (as num_gpu_blocks)")
    p.add_argument("--block-sizes", type=int, nargs="*", default=None, metavar="N",
                   help="also predict the hit rate at these block sizes (tokens; multiples of 16; "
                        "default 16 32 64 128 256) with the same KV memory")
    p.add_argument("--engine", type=int, default=None, help="engine id (default: the busiest)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_whatif)
