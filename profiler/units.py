"""Units and formatting in one place: every number kvscope shows or writes to JSON passes here.

A value that was not measured is ``None`` in data and ``"n/a"`` on screen; NaN and ±Inf are never
shown or emitted (``finite_or_none``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

NOT_MEASURED = "n/a"
"""What a value that was not measured reads as on screen and in the text report."""

GIB = 2**30
MIB = 2**20
KIB = 2**10


def finite_or_none(value: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, NaN/±Inf to None; other values unchanged."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def is_number(value: Any) -> bool:
    """True for a finite int/float (bools excluded)."""
    return (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def percentile(values: Iterable[Any], q: float) -> float | None:
    """The ``q`` quantile (0..1, linear interpolation) of the finite values; None when there are none."""
    arr = np.asarray([v for v in values if is_number(v)], dtype=np.float64)
    return None if arr.size == 0 else float(np.quantile(arr, q))


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text (its type name when it has none), at most ``limit`` chars."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:limit] if text.strip() else type(exc).__name__


def gib(n_bytes: float | None) -> float | None:
    """Bytes in GiB (None when unknown)."""
    n_bytes = finite_or_none(n_bytes)
    return None if n_bytes is None else n_bytes / GIB


def fmt(value: Any, pattern: str) -> str:
    """``pattern.format(value)``, or n/a when the value was not measured."""
    value = finite_or_none(value)
    return NOT_MEASURED if value is None else pattern.format(value)


def fmt_bytes(n_bytes: float | None) -> str:
    """``12.34 GiB`` (``MiB``/``KiB`` below 1 GiB/1 MiB; n/a when unknown)."""
    n_bytes = finite_or_none(n_bytes)
    if n_bytes is None:
        return NOT_MEASURED
    for unit, size in (("GiB", GIB), ("MiB", MIB)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes / KIB:.1f} KiB"


def fmt_gib(n_bytes: float | None) -> str:
    """Bytes as ``1,234.56 GiB`` (n/a when unknown)."""
    return fmt(None if finite_or_none(n_bytes) is None else n_bytes / GIB, "{:,.2f} GiB")


PID_STRIDE = 10_000_000
"""A multi-node session's later shards read their pids as ``shard × PID_STRIDE + pid``
(``profiler/session/shards.py``): above Linux's largest pid, so the remainder is the real pid."""


def fmt_pid(pid: Any) -> str:
    """``pid 22416``, or ``pid 22416 (shard 2)`` for a later shard's pid of a multi-node session."""
    if not is_number(pid):
        return "pid n/a"
    shard, real = divmod(int(pid), PID_STRIDE)
    return f"pid {real}" + (f" (shard {shard + 1})" if shard else "")


def fmt_pct(frac: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, ``12.3%`` (n/a when unknown)."""
    return fmt(frac, f"{{:.{digits}%}}")


def fmt_s(seconds: float | None) -> str:
    """Seconds for display: ``12.3 ms`` below one second, else ``1.23 s`` (n/a when unknown)."""
    seconds = finite_or_none(seconds)
    if seconds is None:
        return NOT_MEASURED
    return f"{seconds * 1000:.1f} ms" if abs(seconds) < 1 else f"{seconds:,.2f} s"


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: Any) -> str:
    """``text`` safe to print to a terminal on one line: every control character (ESC sequences,
    carriage returns, newlines, C1 controls, bidi overrides) becomes a space."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() and ch not in _BIDI else " " for ch in text)


def json_safe(obj: Any, path: str = "", replaced: list[str] | None = None) -> Any:
    """``obj`` with every value strict JSON can hold: NaN/±Inf (and bytes) become None, numpy
    scalars Python numbers, keys text. ``replaced`` collects the dotted paths of the values dropped."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v, f"{path}.{k}" if path else str(k), replaced)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, f"{path}[{i}]", replaced) for i, v in enumerate(obj)]
    if isinstance(obj, bytes | bytearray):
        if replaced is not None:
            replaced.append(path)
        return None
    value = finite_or_none(obj)
    if value is None and obj is not None and replaced is not None:
        replaced.append(path)
    if value is not None and not isinstance(value, str | int | float | bool):
        return str(value)
    return value


def plausible(value: Any, lo: float, hi: float) -> float | int | None:
    """``value`` when it is a finite number (not a bool) within ``lo..hi``, else None: for numbers
    read from free-form session JSON (event details), which the reader's column checks do not see."""
    value = finite_or_none(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if lo <= value <= hi else None


_MARKDOWN_SPECIAL = re.compile(r"([\\`*{}\[\]()!|<>~$:&])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
"""Punctuation Markdown/HTML/Streamlit act on anywhere; ``_`` unless inside a word (CommonMark
never reads ``kv_saturation`` as emphasis)."""
_MARKDOWN_LINE_START = re.compile(r"^(\s*)(\d*)([#+\-=.)])")


def escape_markdown(text: Any) -> str:
    """``text`` (from a session: an OOM's ``where``, an event message, a file name) as literal text
    inside Markdown: every punctuation mark that Markdown, HTML, Streamlit's ``:color[...]``/
    ``:icon:`` directives or LaTeX could act on is backslash-escaped, and control characters go."""
    text = _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), printable(text))
    # a heading, list or quote only where the text starts a line
    return _MARKDOWN_LINE_START.sub(lambda m: m.group(1) + m.group(2) + "\\" + m.group(3), text)
