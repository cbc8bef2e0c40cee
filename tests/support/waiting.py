"""Waiting in tests: on a condition with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` (the condition waited for) and the last value seen when
    ``timeout_s`` passes first. ``predicate`` may raise nothing: let errors fail the test.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval_s)
