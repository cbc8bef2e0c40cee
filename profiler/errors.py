"""The errors kvscope reports to a user as one line (``kvscope: ...``, exit 2); anything else is a bug."""

from __future__ import annotations


class KvscopeError(Exception):
    """A problem the user can act on: printed as one line, never as a traceback."""


class SessionFormatError(KvscopeError):
    """The file is not a session this kvscope can read (or is damaged)."""


class UserError(KvscopeError):
    """A bad argument or an unreachable endpoint: the message says what to change."""


class NotAnalysable(KvscopeError, ValueError):
    """The session is readable but lacks what an analysis needs (what-if without prompt-block
    hashes or KV events); a ValueError too, for callers written before it existed."""
