"""A finding's proposed settings as the ``vllm serve`` flags to change (a copyable diff).

``Finding.settings`` holds EngineArgs names (``{"num_gpu_blocks_override": 3970}``); this turns them
into command-line flags with the value the session ran with, read from the engine's recorded
configuration or, for flags the engine table does not keep, the recorded command line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from profiler.units import finite_or_none

_CONFIG_FOR: dict[str, str] = {"num_gpu_blocks_override": "num_gpu_blocks"}
"""Settings whose effect the engine table records under another name (shown as what it ran with)."""


@dataclass(frozen=True)
class FlagChange:
    """One flag of the fix: its value in the session (None: not set there) and the proposed one."""

    setting: str
    """EngineArgs name."""
    flag: str
    """``--kebab-case`` command-line flag."""
    before: str | None
    after: str
    note: str = ""
    """What ``before`` means when the flag was not given (e.g. "ran with 600 blocks")."""


def flag_name(setting: str) -> str:
    """``num_gpu_blocks_override`` -> ``--num-gpu-blocks-override``."""
    return "--" + setting.replace("_", "-")


def _value_text(value: Any) -> str:
    value = finite_or_none(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def command_value(command: Any, setting: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` / ``setting=VALUE`` in a recorded command."""
    words = [str(c) for c in command] if isinstance(command, list) else shlex.split(str(command or ""))
    flag = flag_name(setting)
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(flag + "="):
            return w.split("=", 1)[1]
    m = re.search(rf"\b{re.escape(setting)}\s*=\s*([\w.]+)", " ".join(words))
    return m.group(1) if m else None


def flag_changes(settings: dict[str, Any], engine: dict[str, Any],
                 command: Any = None) -> list[FlagChange]:
    """The flags a finding's ``settings`` change, with the session's values beside them."""
    out = []
    for setting, value in settings.items():
        if value is None:
            continue
        flag = flag_name(setting)
        if isinstance(value, bool):
            flag = flag if value else "--no-" + setting.replace("_", "-")
            after = ""
        else:
            after = _value_text(value)
        before = command_value(command, setting) if command is not None else None
        known = finite_or_none(engine.get(setting))
        note = ""
        if before is None and known is not None and not isinstance(value, bool):
            before = _value_text(known)
        if before is None and setting in _CONFIG_FOR:
            ran = finite_or_none(engine.get(_CONFIG_FOR[setting]))
            if ran is not None:
                note = f"not set; the engine ran with {_value_text(ran)} {_CONFIG_FOR[setting].replace('num_gpu_', '')}"
        out.append(FlagChange(setting, flag, before, after, note))
    return out


def diff_text(changes: list[FlagChange], model: str | None = None) -> str:
    """A unified-diff-looking block: ``-`` the session's flags, ``+`` the proposed ones."""
    if not changes:
        return ""
    lines = [f"  vllm serve {model or 'MODEL'} ..."]
    for c in changes:
        if c.before is not None:
            lines.append(f"- {c.flag} {c.before}".rstrip())
        elif c.note:
            lines.append(f"# {c.flag}: {c.note}")
        lines.append(f"+ {c.flag} {c.after}".rstrip())
    return "\n".join(lines)


def flags_line(changes: list[FlagChange]) -> str:
    """The proposed flags on one line, to paste after ``vllm serve MODEL``."""
    return " ".join(f"{c.flag} {c.after}".rstrip() for c in changes)


def same_fix_as(findings: list[dict[str, Any]]) -> dict[int, str]:
    """Index of each finding whose recommendation repeats an earlier finding's -> that finding's code
    (KV_SATURATION and PREEMPTION_STORM of one engine usually propose the same cache size)."""
    seen: dict[tuple[Any, str], str] = {}
    out: dict[int, str] = {}
    for i, f in enumerate(findings):
        rec = f.get("recommendation")
        if not rec:
            continue
        key = (f.get("engine_id"), rec)
        if key in seen:
            out[i] = seen[key]
        else:
            seen[key] = str(f.get("code"))
    return out
