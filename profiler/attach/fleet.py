"""Every attached server's scrape loop on one asyncio event loop, in one thread.

32 servers at 4 Hz are 128 small HTTP requests a second: one loop with kept-alive connections
(aiohttp) does them without a thread per server. Each server's loop is ``ServerAttachment.run``;
this module owns the thread, the loop, the HTTP client and the wake-up when the attach stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from profiler.attach.fetch import new_client


class Fleet:
    """Runs ``jobs`` (coroutine functions taking ``(client, fleet)``) until they end or ``stop``."""

    def __init__(self, jobs: list[Callable[[Any, Fleet], Awaitable[None]]]) -> None:
        self._jobs = jobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._stop_asked = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kvscope-scrape", daemon=True)

    def start(self) -> None:
        """Start the loop thread; returns once the loop runs."""
        self._thread.start()
        self._ready.wait(10.0)

    def stop(self) -> None:
        """Wake every job that waits (they see their ``stop`` event set and end)."""
        self._stop_asked.set()
        loop, fut = self._loop, self._stopped
        if loop is not None and fut is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def join(self, timeout_s: float) -> None:
        """Wait for every job to end."""
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """True while the loop thread runs."""
        return self._thread.is_alive()

    async def sleep(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` or until the attach stops; True when it stopped."""
        fut = self._stopped
        assert fut is not None
        if fut.done():
            return True
        if delay_s > 0:
            await asyncio.wait((fut,), timeout=delay_s)
        return fut.done()

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        if self._stop_asked.is_set():
            _resolve(self._stopped)
        self._ready.set()
        async with new_client(limit=max(len(self._jobs) * 2, 16)) as client:
            await asyncio.gather(*(job(client, self) for job in self._jobs))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
