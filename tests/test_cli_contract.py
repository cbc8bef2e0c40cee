"""``kvscope report --json`` keeps the shape README.md documents (scripts depend on it)."""

from __future__ import annotations

import json
import re

from tests.support.engine import ROOT, kvscope

SESSION = ROOT / "sessions" / "gpu_h200_kv_pressure.kvscope"
"""A GPU session with findings: its ``gpus`` and ``findings`` lists are not empty."""


def documented_keys() -> tuple[list[str], dict[str, list[str]]]:
    """Top-level keys of README's ``kvscope report --json`` block, and each object's own keys."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## `kvscope report --json`", 1)[1]
    block = section.split("```", 2)[1]
    top: list[str] = []
    nested: dict[str, list[str]] = {}
    depth, last_top = 0, None
    for m in re.finditer(r'"([A-Za-z_0-9]+)"|[{}]', block):  # lists add no depth: [{...}] is one level
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
        elif depth == 1:
            top.append(m.group(1))
            last_top = m.group(1)
        elif depth == 2 and last_top is not None:
            nested.setdefault(last_top, []).append(m.group(1))
    assert depth == 0, "unbalanced README block"
    return top, nested


def nullable_keys() -> set[str]:
    """Top-level keys README's block documents as ``"key": {...} or null``."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## `kvscope report --json`", 1)[1].split("```", 2)[1]
    out = set()
    for m in re.finditer(r'^ "([A-Za-z_0-9]+)": \{', block, re.M):
        depth, i = 0, m.end() - 1
        while True:  # the closing brace of this object
            depth += {"{": 1, "}": -1}.get(block[i], 0)
            if depth == 0:
                break
            i += 1
        if block[i + 1:].lstrip().startswith("or null"):
            out.add(m.group(1))
    return out


def test_readme_block_is_parsed() -> None:
    top, nested = documented_keys()
    assert top[0] == "kvscope_report" and top[-1] == "notes" and len(top) >= 10
    assert "started_at_unix_s" in nested["session"]
    assert nullable_keys() == {"spec_decode", "spec_decode_by_prompt_length"}


def test_report_json_has_every_documented_key_and_started_at_unix_s() -> None:
    out = kvscope("report", "--json", str(SESSION), timeout_s=120)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    top, nested = documented_keys()
    assert [k for k in top if k not in rep] == []
    assert {"session", "engine", "gpus", "findings"} <= set(nested)
    for key, keys in nested.items():
        value = rep[key]
        if value is None:  # documented as `{...} or null` (this session did not speculate)
            assert key in nullable_keys(), key
            continue
        if isinstance(value, list):  # gpus, findings: this GPU session under pressure has both
            assert value, key
            value = value[0]
        assert isinstance(value, dict), key
        assert [k for k in keys if k not in value] == [], key
    session = rep["session"]
    started = session["started_at_unix_s"]
    assert isinstance(started, (int, float)) and not isinstance(started, bool) and started > 1e9
    assert "started_unix_s" not in session and "started_unix_s" not in rep
