"""Speculative decoding on the CPU engine: acceptance on short vs long prompts and what it changes.

    python bench/bench_spec_decode.py [--out DIR] [--sessions WITH WITHOUT]

Records the bundled ``spec_ngram`` / ``spec_ngram_off`` workload (``sessions/make_sessions.py``:
short prompts, drained, then long ones; n-gram with 3 tokens per draft, and the same work without)
on the tiny Llama under the shared engine lock, or reads two given sessions, and prints from each
report: acceptance rate and mean accepted length overall and on short vs long prompts, then the
swing against the run without speculation (KV peak, blocks, drafter weights, throughput, decode
time per token). One run each: the numbers move from run to run on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler.analysis.diagnosis import diagnose  # noqa: E402
from profiler.analysis.report import build_report  # noqa: E402
from profiler.analysis.spec_decode import mean_accepted_length, spec_swing  # noqa: E402
from profiler.session.reader import open_session  # noqa: E402
from profiler.units import fmt  # noqa: E402
from sessions.make_sessions import SCENARIOS, model_for  # noqa: E402
from tests.support.engine import engine_env, engine_lock  # noqa: E402


def _record(name: str, out: Path) -> Path:
    path = out / f"{name}.kvscope"
    cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(path), "--",
           sys.executable, str(ROOT / "tests" / "support" / "workload.py"),
           str(model_for(name, out)), *SCENARIOS[name]]
    with engine_lock():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=engine_env(), cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return path


def _report(path: Path) -> dict:
    with open_session(path) as s:
        return build_report(s, [f.as_dict() for f in diagnose(s)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="keep the sessions here")
    ap.add_argument("--sessions", nargs=2, metavar=("WITH", "WITHOUT"), default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args()
    if a.sessions:
        with_path, without_path = (Path(p) for p in a.sessions)
    else:
        out = Path(a.out or tempfile.mkdtemp(prefix="kvscope-spec-"))
        out.mkdir(parents=True, exist_ok=True)
        with_path, without_path = _record("spec_ngram", out), _record("spec_ngram_off", out)
    rep, base = _report(with_path), _report(without_path)
    sd, by_len = rep["spec_decode"], rep["spec_decode_by_prompt_length"]
    print(f"n-gram ({sd['method']}, {len(sd['accepted_per_position'])} tokens per draft): "
          f"acceptance {fmt(sd['acceptance_rate'], '{:.1%}')}, mean accepted length "
          f"{fmt(mean_accepted_length(sd), '{:.2f}')}, per position {sd['accepted_per_position']} of "
          f"{sd['drafts']} drafts")
    for name in ("short", "long"):
        b = by_len[name]
        print(f"  {name:<5} prompts (split at {by_len['split_tokens']} tokens, {b['steps']} steps): "
              f"acceptance {fmt(b['acceptance_rate'], '{:.1%}')}, mean accepted length "
              f"{fmt(b['mean_accepted_length'], '{:.2f}')}")
    print(f"  steps with both in flight: {by_len['mixed_steps']}")
    rows = spec_swing(rep, base)
    print("\n| metric | with n-gram | without | with − without |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {fmt(r['with'], '{:,.4g}')} | {fmt(r['without'], '{:,.4g}')} | "
              f"{fmt(r['delta'], '{:+,.4g}')} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"spec_decode": sd, "by_prompt_length": by_len,
                                            "swing": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
