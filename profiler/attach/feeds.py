"""The scrape → record seam: what each recorder reads from /metrics, and how often.

A ``Feed`` names the Prometheus samples it reads and the period it needs them at. Each tick of a
server's scrape loop asks the server for the union of the samples of the feeds that are due
(``?name[]=...``: vLLM then renders only those families, not its whole /metrics text), and hands
the body to each due feed. The attach's own feed (``core_samples``: the gauges and counters of the
``steps`` table) is due every tick; a feed for coarse data, e.g. latency histograms, sets a longer
period (``COARSE_PERIOD_S``) and costs the server nothing in between.

Counters are cumulative, so a feed read every N seconds still gets exact per-interval totals (the
deltas add up); only gauges need the fast rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from profiler.attach.metrics import COUNTERS, GAUGES

COARSE_PERIOD_S = 5.0
"""Suggested period of feeds of coarse, cumulative data (histograms): a 4 Hz attach then asks for
them on one scrape in twenty."""


@dataclass(frozen=True)
class Feed:
    """One consumer of /metrics bodies (see the module docstring)."""

    name: str
    samples: tuple[str, ...]
    """Prometheus sample names it reads (as exposed: ``vllm:x_total``, ``vllm:h_bucket``, ...)."""
    consume: Callable[[Any, str, float], None]
    """Called as ``consume(server, body, t_unix_s)`` in the scrape loop (the ``ServerAttachment``,
    the body holding at least ``samples``, the scrape time). It must be quick; what it raises is
    recorded like any scrape-loop error (a gap, one ``error`` event)."""
    period_s: float | None = None
    """How often it needs the samples; None: every scrape."""


def core_samples() -> tuple[str, ...]:
    """The samples of the ``steps`` rows: gauges, counters (every name vLLM 0.20-0.33 used) and
    the process start time (restart detection)."""
    gauges = [n for names in GAUGES.values() for n in names]
    counters = [f"{n}_total" for names in COUNTERS.values() for n in names]
    return (*gauges, *counters, "process_start_time_seconds")


class FeedSchedule:
    """Which feeds are due at a tick, and the samples to ask for."""

    def __init__(self, feeds: list[Feed]) -> None:
        self.feeds = feeds
        self._last: dict[str, float] = {}

    def due(self, now_s: float) -> list[Feed]:
        """Feeds whose period has passed since they were last served (every-tick feeds always)."""
        return [f for f in self.feeds if f.period_s is None
                or now_s - self._last.get(f.name, -1e18) >= f.period_s - 1e-3]

    def served(self, feeds: list[Feed], now_s: float) -> None:
        """Mark ``feeds`` as served at ``now_s``."""
        for f in feeds:
            self._last[f.name] = now_s

    @staticmethod
    def samples(feeds: list[Feed]) -> tuple[str, ...]:
        """The union of the feeds' samples, in first-seen order."""
        return tuple(dict.fromkeys(s for f in feeds for s in f.samples))
