"""The session's heartbeat: the process that makes a session says, every second, that it still does.

A reader cannot tell a recording that is idle (the engine has nothing to do, so no steps are
written) from one whose recorder or attach process is gone, from its data alone. The process that
owns the session (``kvscope record``, the program running ``profiler.record``, or ``kvscope
attach``) therefore rewrites the meta key ``heartbeat`` every ``HEARTBEAT_S``::

    {"t_unix_s": 1764..., "pid": 123, "host": "h", "mode": "record" | "attach",
     "interval_s": 1.0, "servers": [{"url", "state": "ok" | "failing" | "lost", "since_unix_s",
                                     "reason"}]}   # attach only

A heartbeat older than ``stale_after_s`` (or, on the same host, a pid that no longer runs) means
the process is gone. ``profiler.analysis.live`` turns this into the Live page's status.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from profiler.session.writer import SessionWriter

HEARTBEAT_KEY = "heartbeat"
"""Meta key of the heartbeat."""
HEARTBEAT_S = 1.0
"""How often the owner rewrites it."""
STALE_BEATS = 5
"""A heartbeat this many periods old means its process is gone (or hung)."""


def stale_after_s(heartbeat: dict[str, Any]) -> float:
    """Age beyond which ``heartbeat`` says its process is gone."""
    interval = heartbeat.get("interval_s")
    ok = isinstance(interval, int | float) and not isinstance(interval, bool) and 0 < interval < 3600
    return STALE_BEATS * (float(interval) if ok else HEARTBEAT_S)


def beat(writer: SessionWriter, mode: str, extra: dict[str, Any] | None = None,
         interval_s: float = HEARTBEAT_S) -> None:
    """Write one heartbeat now (never raises: a heartbeat must not stop the recording)."""
    value = {"t_unix_s": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
             "mode": mode, "interval_s": interval_s, **(extra or {})}
    try:
        writer.set_meta(**{HEARTBEAT_KEY: value})
    except Exception:  # noqa: BLE001 (a locked or closed file: the next beat tries again)
        pass


class Heartbeat:
    """A daemon thread that beats every ``interval_s`` until ``stop``."""

    def __init__(self, writer: SessionWriter, mode: str,
                 extra: Callable[[], dict[str, Any]] | None = None,
                 interval_s: float = HEARTBEAT_S) -> None:
        self._writer, self._mode, self._extra, self.interval_s = writer, mode, extra, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvscope-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Beat now and then every ``interval_s``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (the last heartbeat stays in the session)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.interval_s + 1.0)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._writer.closed:
            extra = None
            if self._extra is not None:
                try:
                    extra = self._extra()
                except Exception:  # noqa: BLE001 (state for the heartbeat is best effort)
                    extra = None
            beat(self._writer, self._mode, extra, self.interval_s)
            self._stop.wait(self.interval_s)
