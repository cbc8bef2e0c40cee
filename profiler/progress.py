"""A one-line progress bar on stderr for work done once (building a session's summaries)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def progress_line(label: str, out: TextIO | None = None) -> Callable[[str, float], None]:
    """A ``progress(what, fraction)`` callback: on a terminal, a bar redrawn in place (at most 10
    times a second); elsewhere, one line per tenth done, so logs stay short."""
    stream = out if out is not None else sys.stderr
    tty = stream.isatty()
    state = {"t": 0.0, "tenth": -1}

    def progress(what: str, frac: float) -> None:
        frac = min(max(frac, 0.0), 1.0)
        if tty:
            now = time.monotonic()
            if now - state["t"] < 0.1 and frac < 1.0:
                return
            state["t"] = now
            bar = "#" * int(frac * 30)
            stream.write(f"\r{label}: {what} [{bar:<30}] {frac:4.0%}")
            if frac >= 1.0:
                stream.write("\n")
        else:
            tenth = int(frac * 10)
            if tenth == state["tenth"]:
                return
            state["tenth"] = tenth
            stream.write(f"{label}: {what} {frac:.0%}\n")
        stream.flush()

    return progress
