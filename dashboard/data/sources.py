"""Which session files the dashboard offers: the command line's, else bundled plus the user's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_UI_SESSIONS = "KVSCOPE_UI_SESSIONS"
"""os.pathsep-joined session paths given to ``kvscope ui``."""

ENV_SESSIONS_DIR = "KVSCOPE_SESSIONS_DIR"
"""Overrides the user sessions folder (default ``~/.kvscope/sessions``)."""

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "sessions"
SESSION_SUFFIX = ".kvscope"


@dataclass(frozen=True)
class SessionSource:
    """One selectable session file."""

    path: Path
    label: str
    """Short name shown in pickers (file stem, with its folder kind)."""
    origin: str
    """``cli``, ``bundled`` or ``user``."""


def user_sessions_dir(env: dict[str, str] | None = None) -> Path:
    """The user's session folder (``$KVSCOPE_SESSIONS_DIR`` or ``~/.kvscope/sessions``)."""
    override = (dict(os.environ) if env is None else env).get(ENV_SESSIONS_DIR)
    return Path(override).expanduser() if override else Path.home() / ".kvscope" / "sessions"


def _folder(folder: Path, origin: str) -> list[SessionSource]:
    if not folder.is_dir():
        return []
    # a session is a file, or a folder of shards named like one (a multi-node engine)
    return [SessionSource(p, p.stem, origin) for p in sorted(folder.glob(f"*{SESSION_SUFFIX}"))
            if p.is_file() or p.is_dir()]


def discover_sessions(env: dict[str, str] | None = None) -> list[SessionSource]:
    """Sessions named by ``KVSCOPE_UI_SESSIONS``, or else the bundled and user-folder sessions."""
    env = dict(os.environ) if env is None else env
    given = [p for p in env.get(ENV_UI_SESSIONS, "").split(os.pathsep) if p.strip()]
    if given:
        out = []
        for raw in given:
            p = Path(raw).expanduser()
            if p.is_dir() and p.suffix != SESSION_SUFFIX:
                out.extend(_folder(p, "cli"))
            else:
                out.append(SessionSource(p, p.stem or p.name, "cli"))
        return _unique_labels(out)
    return _unique_labels(_folder(BUNDLED_DIR, "bundled") + _folder(user_sessions_dir(env), "user"))


def _unique_labels(sources: list[SessionSource]) -> list[SessionSource]:
    """Disambiguate equal stems by appending the parent folder name."""
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.label] = seen.get(s.label, 0) + 1
    out = []
    for s in sources:
        label = s.label if seen[s.label] == 1 else f"{s.label} ({s.path.parent.name})"
        if s.origin == "user":
            label = f"{label} · user"
        out.append(SessionSource(s.path, label, s.origin))
    return out
