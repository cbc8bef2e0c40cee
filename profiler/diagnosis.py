"""Diagnosis: turn a session into findings (code, severity, time range, message, recommendation)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from profiler.reader import Session


@dataclass
class Finding:
    """One diagnosed problem with the numbers behind it."""

    code: str
    severity: str
    """info, warning or critical."""
    t_start_s: float | None
    """Start of the affected range, seconds from session start."""
    t_end_s: float | None
    message: str
    recommendation: str | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def diagnose(session: Session) -> list[Finding]:
    """All findings for ``session`` (filled by the diagnosis rules)."""
    return []
