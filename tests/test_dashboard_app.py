"""Every dashboard page run with Streamlit's AppTest on real recorded sessions (CPU and GPU)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import serve
from dashboard.charts import panels as dashboard_charts
from dashboard.data import derive
from dashboard.data.reports import compute_report
from dashboard.data.session import load_session
from tests.support.dashboard import go, open_app

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ROOT / "sessions"
CPU = SESSIONS / "kv_saturation.kvscope"
GPU = SESSIONS / "gpu_h200x2_tp2.kvscope"
HEALTHY = SESSIONS / "healthy.kvscope"


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A factory: AppTest of the dashboard offering ``paths`` (first one selected)."""

    def make(*paths: Path) -> AppTest:
        return open_app(monkeypatch, *paths)

    yield make


def charts(at: AppTest) -> list[dict[str, Any]]:
    """Specs of every Vega-Lite chart on the page."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def titles(spec: dict[str, Any]) -> list[str]:
    out = []
    t = spec.get("title")
    if t:
        out.append(t if isinstance(t, str) else t.get("text", ""))
    for key in ("layer", "vconcat", "hconcat"):
        for sub in spec.get(key, []):
            out.extend(titles(sub))
    return out


def test_overview_cpu_numbers_match_the_report(app: Any) -> None:
    at = app(CPU, HEALTHY)
    rep, findings = compute_report(CPU)
    assert at.title[0].value == f"Overview · {CPU.stem}"
    assert metric(at, "Engine steps") == f"{rep['steps']:,}"
    assert metric(at, "Preemptions") == f"{int(rep['preemptions']):,}"
    assert metric(at, "Requests finished") == f"{rep['requests_finished']:,}"
    assert metric(at, "Peak KV usage") == f"{rep['kv_cache']['peak_usage_frac']:.1%}"
    assert metric(at, "Peak GPU memory") == "—"  # CPU session: NVML off
    assert len(charts(at)) == 2
    assert any("GPUs: not measured on this machine (no NVML)" in c.value for c in at.caption)
    assert len(at.get("download_button")) >= 1
    assert {f["code"] for f in findings} == FINDINGS[CPU.stem]
    shown = [m.value for m in at.markdown]
    for f in findings:
        assert any(f["code"] in s for s in shown), f["code"]
    # A finding's button opens the Timeline zoomed to its range.
    assert findings[0]["t_start_s"] is not None
    at.button(key="finding-0").click().run()
    assert not at.exception
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    start = float(findings[0]["t_start_s"])
    shown_start = float(showing.split("**")[1].split("–")[0].replace(",", ""))
    assert shown_start <= start and shown_start >= start - 5.0


def test_overview_gpu_shows_device_memory(app: Any) -> None:
    at = app(GPU)
    rep, _ = compute_report(GPU)
    assert "GiB" in metric(at, "Peak GPU memory")
    peak = max(g["peak_used_bytes"] for g in rep["gpus"])
    assert metric(at, "Peak GPU memory") == f"{peak / 2**30:,.2f} GiB"
    assert len(at.table) >= 3  # info, config, GPUs
    gpu_table = at.table[2].value
    assert set(gpu_table["device_index"]) == set(load_session(GPU).gpus["device_index"])


def test_timeline_cpu_zoom_and_no_nvml(app: Any) -> None:
    at = go(app(CPU), "timeline")
    assert any("not measured on this machine (no NVML)" in i.value for i in at.info)
    specs = charts(at)
    assert len(specs) == 1 and "vconcat" in specs[0]
    names = titles(specs[0])
    for part in ("KV cache usage", "Requests running and waiting", "Preemptions", "Prefix-cache hit rate",
                 "Throughput"):
        assert any(part in n for n in names), (part, names)
    whole = [b for b in at.button if b.label == "Whole session"][0]
    whole.click().run()
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    assert showing.startswith("Showing **0.00 –")
    at.query_params["t0"] = "50"
    at.query_params["t1"] = "51"
    at.run()
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    assert showing.startswith("Showing **50.00 – 51.00 s**")


def test_served_timeline_opens_on_the_spec_built_at_start(app: Any) -> None:
    """``dashboard.serve.warm`` builds the first session's Timeline spec with the same shape the
    page asks for, so opening the Timeline builds no new spec (a cold build costs ~0.2 s)."""
    dashboard_charts._TEMPLATES.clear()
    serve.warm([CPU])
    built = dict(dashboard_charts._TEMPLATES)
    assert len(built) == 1
    at = go(app(CPU), "timeline")
    assert dashboard_charts._TEMPLATES == built
    template = next(iter(built.values()))
    assert len(charts(at)[0]["vconcat"]) == len(template["vconcat"])


def test_timeline_gpu_has_memory_panels(app: Any) -> None:
    at = go(app(GPU), "timeline")
    names = titles(charts(at)[0])
    assert any(n.startswith("GPU 0 memory") for n in names)
    assert any(n.startswith("GPU 1 memory") for n in names)
    assert not at.info  # nothing "not measured" on a GPU session


def test_memory_page_cpu_and_gpu(app: Any) -> None:
    at = go(app(CPU), "memory")
    assert len(charts(at)) == 1  # start-up waterfall only
    infos = " ".join(i.value for i in at.info)
    assert "not measured on this machine (no NVML)" in infos
    assert "not measured on this machine (no CUDA allocator)" in infos
    at = go(app(GPU), "memory")
    specs = charts(at)
    names = [n for s in specs for n in titles(s)]
    assert sum("Worker rank" in n for n in names) == 2  # tensor parallel: one waterfall per worker
    assert "GPU memory per process (NVML)" in names
    assert any("reserved vs allocated" in n for n in names)


def test_kv_cache_page(app: Any) -> None:
    at = go(app(CPU), "kv_cache")
    data = load_session(CPU)
    assert metric(at, "Capacity (blocks)") == f"{data.num_blocks():,}"
    storm = derive.preemption_episodes(data.preempting_steps(), 1.0)
    assert int(metric(at, "Preemption episodes").replace(",", "")) == len(storm) >= 1
    assert len(at.dataframe[0].value) == len(storm)
    at.select_slider(key="kv_episode_gap_s").set_value(0.05).run()
    fine = derive.preemption_episodes(data.preempting_steps(), 0.05)
    assert int(metric(at, "Preemption episodes").replace(",", "")) == len(fine) > len(storm)
    assert len(charts(at)) == 2
    at.segmented_control(key="kv_unit").set_value("tokens").run()
    assert any("(tokens)" in n for s in charts(at) for n in titles(s))


def test_requests_page(app: Any) -> None:
    at = go(app(CPU), "requests")
    data = load_session(CPU)
    reqs = data.requests()
    assert len(charts(at)) == 8  # 5 latency histograms, preemptions, short/long, scatter
    table = at.dataframe[-1].value
    assert len(table) == len(reqs)
    pct = at.dataframe[0].value.set_index("metric")
    assert pct.loc["TTFT", "p99_s"] == pytest.approx(reqs["ttft_s"].quantile(0.99))
    assert {b.label for b in at.get("download_button")} >= {"Percentiles CSV", "Requests CSV"}
    at.slider(key="prompt_threshold").set_value(int(reqs["prompt_tokens"].max())).run()
    assert not at.exception


def test_replay_steps_and_plays(app: Any) -> None:
    at = go(app(CPU), "replay")
    data = load_session(CPU)
    first = float(data.steps.fine["t_lo_s"].min())
    key = f"cursor::{data.path}"
    assert at.session_state[key] == pytest.approx(first)
    assert metric(at, "Step time") == f"{first:.4f} s"
    [b for b in at.button if b.label == "Step"][0].click().run()
    moved = at.session_state[key]
    assert moved > first
    around = data.steps_around(moved, before=1, after=0)
    assert metric(at, "Running") == str(int(around["running"].iloc[-1]))
    names = [n for s in charts(at) for n in titles(s)]
    assert any(n.startswith("KV cache:") and "blocks used" in n for n in names)
    assert len(charts(at)) == 3
    [b for b in at.button if b.label == "Play"][0].click().run()
    assert at.session_state["replay_playing"] is True
    [b for b in at.button if b.label == "Pause"][0].click().run()
    assert at.session_state["replay_playing"] is False
    assert at.dataframe[0].value["what"].tolist()[0] == "running requests"


def test_compare_page(app: Any) -> None:
    at = go(app(HEALTHY, CPU), "compare")
    deltas = at.dataframe[0].value.set_index("metric")
    ra, _ = compute_report(HEALTHY)
    rb, _ = compute_report(CPU)
    assert deltas.loc["engine steps", "A"] == ra["steps"]
    assert deltas.loc["engine steps", "B"] == rb["steps"]
    assert deltas.loc["engine steps", "B − A"] == rb["steps"] - ra["steps"]
    assert len(charts(at)) == 5
    assert len(at.selectbox) >= 2


def test_live_page_reads_the_window(app: Any) -> None:
    at = go(app(CPU), "live")
    assert metric(at, "Status") == "finished"
    steps = int(metric(at, "Steps in window").replace(",", ""))
    assert steps == load_session(CPU).steps.total_steps  # the whole 55 s session fits 5 minutes
    assert len(charts(at)) == 3


def test_live_page_follows_a_session_being_written(app: Any, tmp_path: Path) -> None:
    import sqlite3
    import time

    from profiler.session.writer import SessionWriter

    live = tmp_path / "growing.kvscope"
    shutil.copy(CPU, live)
    conn = sqlite3.connect(live)
    conn.execute("DELETE FROM meta WHERE key = 'ended_unix_s'")  # as if still recording
    conn.commit()
    conn.close()
    writer = SessionWriter(live, flush_interval_s=0.05)
    now = time.time()
    for i in range(30):
        writer.append("steps", (1, now + i * 0.01, 4, 2, 0.6, 0, 0, 0, 0, 0, 0, 4, 0, 0))
    writer.flush()
    at = go(app(live), "live")
    assert metric(at, "Status") == "recording"
    assert metric(at, "Steps in window") == "30"  # the old steps are far outside the last 5 minutes
    for i in range(30, 50):
        writer.append("steps", (1, now + i * 0.01, 4, 2, 0.6, 0, 0, 0, 0, 0, 0, 4, 0, 0))
    writer.flush()
    writer.close()
    at.run()
    assert metric(at, "Steps in window") == "50"


def test_bad_session_shows_one_error_and_others_work(app: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.kvscope"
    bad.write_bytes(CPU.read_bytes()[:5000])
    newer = tmp_path / "future.kvscope"
    shutil.copy(HEALTHY, newer)
    import sqlite3

    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    at = app(bad, newer, HEALTHY)
    assert len(at.error) == 1 and "broken" in at.error[0].value
    assert "\n" not in at.error[0].value.strip()
    at.sidebar.selectbox[0].set_value("future").run()
    assert len(at.error) == 1 and "newer than this kvscope" in at.error[0].value
    at.sidebar.selectbox[0].set_value("healthy").run()
    assert not at.error and not at.exception
    assert metric(at, "Engine steps") == f"{compute_report(HEALTHY)[0]['steps']:,}"
    go(at, "timeline")
    assert not at.error and len(charts(at)) == 1


PAGES = sorted(p.stem for p in (ROOT / "dashboard" / "views").glob("*.py") if p.stem != "__init__")
"""Every page of the app (a new view file is tested without being listed here)."""

FINDINGS = {
    "gpu_h200_fragmentation": {"GPU_MEMORY_PRESSURE"},
    "gpu_h200_healthy": {"QUEUEING", "KV_OVERPROVISIONED"},
    "gpu_h200_kv_pressure": {"KV_SATURATION", "PREEMPTION_STORM"},
    "gpu_h200_oom_runtime": {"OOM_RUNTIME"},
    "gpu_h200_oom_startup": {"OOM_STARTUP"},
    "gpu_h200x2_tp2": {"QUEUEING", "KV_OVERPROVISIONED"},
    "healthy": {"QUEUEING"},
    "kv_saturation": {"PREFIX_THRASH", "KV_SATURATION", "PREEMPTION_STORM"},
    "prefix_thrash": {"PREFIX_THRASH"},
    "kv_forensics": {"KV_SATURATION", "PREEMPTION_STORM"},
    "gpu_h200_offload": {"PREFIX_THRASH"},
    "gpu_h200_offload_attach": {"PREEMPTION_STORM"},
    # a foreign process (a server still starting) held 518 MiB of the GPU during this run
    "gpu_h200_spec_eagle": {"GPU_MEMORY_PRESSURE", "KV_OVERPROVISIONED", "QUEUEING"},
    "gpu_h200_spec_off": {"KV_OVERPROVISIONED", "QUEUEING"},
}
"""Finding codes each bundled session shows on its Overview (every one of them has some)."""


def test_every_page_is_tested() -> None:
    assert {"overview", "timeline", "memory", "kv_cache", "requests", "replay", "compare", "live",
            "kv_events", "whatif"} <= set(PAGES)
    assert set(FINDINGS) == {p.stem for p in SESSIONS.glob("*.kvscope")}


@pytest.mark.parametrize("session", sorted(SESSIONS.glob("*.kvscope")), ids=lambda p: p.stem)
def test_every_page_opens_every_bundled_session(app: Any, session: Path) -> None:
    """CPU and GPU sessions, OOM ones included (no steps at all): no page may raise or show an error."""
    at = app(session)
    assert at.title[0].value == f"Overview · {session.stem}"
    _, findings = compute_report(session)
    assert {f["code"] for f in findings} == FINDINGS[session.stem]
    shown = [m.value for m in at.markdown]
    for f in findings:
        assert any(f["code"] in s for s in shown), f["code"]
    for page in PAGES:
        go(at, page)
        assert not at.error, (page, [e.value for e in at.error])
        headings = [h.value for h in [*at.title, *at.header]]
        assert headings and (page == "overview") == headings[0].startswith("Overview"), (page, headings)


def test_overview_tables_say_not_measured_never_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session without an engine (a plain torch process): no "None" in the info table, and an
    info line instead of an empty settings table."""
    at = open_app(monkeypatch, SESSIONS / "gpu_h200_fragmentation.kvscope")
    cells = [str(v) for t in at.table for v in t.value.to_numpy().ravel()]
    assert cells and "None" not in cells and "nan" not in cells
    assert "n/a" in cells  # model and vLLM were not recorded
    assert any("No vLLM engine was created" in i.value for i in at.info)
