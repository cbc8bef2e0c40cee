"""How early and how well the Live page's FORECAST_OOM predicts a real out-of-memory on a GPU.

    PYTHONPATH=. python3 bench/gpu_oom_forecast.py OUT.kvscope [--grow-mib-per-s 2048]

No vLLM: one torch process plays a worker whose memory grows steadily (a chunk every 0.25 s)
until CUDA runs out, recorded by kvscope's own NVML and allocator samplers like a vLLM worker.
Afterwards every second of the recording is replayed as the Live page would have seen it (the
report window ending then, ``profiler.analysis.forecast``): when the forecast first appeared,
how long before the real OOM, and the error of its predicted time, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def grow_until_oom(out: Path, mib_per_s: float) -> tuple[float, float]:
    """Record the growth; (start, OOM) unix times."""
    os.environ["KVSCOPE_SESSION"] = str(out)
    import torch

    from profiler.recorder import context
    from profiler.recorder.allocator import start_allocator_sampler
    from profiler.recorder.failures import record_failure

    w = context.writer()
    assert w is not None
    context.claim_owner(["bench/gpu_oom_forecast.py"])
    torch.cuda.init()
    torch.cuda.set_device(0)
    context.register_process("worker", rank=0)
    start_allocator_sampler(w, 0.1)
    chunk = int(mib_per_s / 4) * 2**20
    held = []
    t0 = time.time()
    time.sleep(3.0)  # a flat start: nothing to forecast yet
    try:
        while True:
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
            time.sleep(0.25)
    except torch.cuda.OutOfMemoryError as exc:
        t_oom = time.time()
        record_failure(exc, "worker: execute_model")
    del held
    time.sleep(0.5)
    context.finish_session(w, exit_code=0)
    return t0, t_oom


def replay(out: Path, t0: float, t_oom: float) -> dict[str, object]:
    """The forecast the Live page would have shown at each second before the OOM."""
    from profiler.analysis.forecast import oom_forecast
    from profiler.analysis.live import window_bounds
    from profiler.session.reader import open_session

    rows = []
    with open_session(out) as s:
        start, _ = s.bounds()
    for t_end in np.arange(t0 + 1.0, t_oom, 1.0):
        window = (max(t_end - 300.0, float(start)), float(t_end))
        with open_session(out, window=window) as s:
            got = oom_forecast(s)
        eta = got[0].metrics["eta_s"] if got else None
        rows.append({"t_s": round(float(t_end - t0), 2), "left_s": round(float(t_oom - t_end), 2),
                     "eta_s": None if eta is None else round(float(eta), 2),
                     "settings": got[0].settings if got else None})
    hits = [r for r in rows if r["eta_s"] is not None]
    errors = [abs(r["eta_s"] - r["left_s"]) for r in hits]
    with open_session(out) as s:
        whole = window_bounds(s, 300.0)
    return {
        "oom_after_s": round(t_oom - t0, 2),
        "first_forecast_s_before_oom": hits[0]["left_s"] if hits else None,
        "forecasts": len(hits), "seconds": len(rows),
        "median_abs_error_s": float(np.median(errors)) if errors else None,
        "max_abs_error_s": float(max(errors)) if errors else None,
        "last_settings": hits[-1]["settings"] if hits else None,
        "session_window": whole, "rows": rows,
    }


def main() -> int:
    """Grow, then replay."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--grow-mib-per-s", type=float, default=2048.0)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    t0, t_oom = grow_until_oom(out, a.grow_mib_per_s)
    result = replay(out, t0, t_oom)
    Path(str(out) + ".json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
