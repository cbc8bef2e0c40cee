"""Every dashboard page run with Streamlit's AppTest on real recorded sessions (CPU and GPU)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import serve, state
from dashboard.charts import panels as dashboard_charts
from dashboard.charts import timeline as timeline_charts
from dashboard.data import derive
from dashboard.data.reports import report_memo
from dashboard.data.session import load_session
from profiler.units import escape_markdown, fmt_bytes, fmt_s
from tests.support.dashboard import go, open_app

pytestmark = pytest.mark.browser  # the dashboard as a user runs it (Streamlit AppTest)

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
    at = go(app(CPU, HEALTHY), "overview")
    rep, findings = report_memo(CPU)
    assert at.title[0].value == f"Overview · {CPU.stem}"
    assert metric(at, "Engine steps") == f"{rep['steps']:,}"
    assert metric(at, "Preemptions") == f"{int(rep['preemptions']):,}"
    assert metric(at, "Requests finished") == f"{rep['requests_finished']:,}"
    assert metric(at, "Peak KV usage") == f"{rep['kv_cache']['peak_usage_frac']:.1%}"
    assert "Peak GPU memory" not in {m.label for m in at.metric}  # CPU session: NVML off, no n/a card
    assert any("Not measured in this session: GPU memory" in c.value for c in at.caption)
    assert len(charts(at)) == 2
    assert any("GPUs: not measured on this machine (no NVML)" in c.value for c in at.caption)
    assert len(at.get("download_button")) >= 1
    assert {f["code"] for f in findings} == FINDINGS[CPU.stem]
    shown = [m.value for m in at.markdown]
    for f in findings:
        assert any(f["code"] in s for s in shown), f["code"]
    # A finding's button opens the Timeline zoomed to its range, the range highlighted and the
    # panel that shows it first.
    assert findings[0]["t_start_s"] is not None
    at.button(key="finding-0").click().run()
    assert not at.exception
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    start = float(findings[0]["t_start_s"])
    shown_start = float(showing.split("**")[1].split("–")[0].replace(",", ""))
    assert shown_start <= start and shown_start >= start - 5.0
    assert any(findings[0]["code"] in m.value and "highlighted" in m.value for m in at.markdown)
    panel = titles(charts(at)[0]["vconcat"][1])
    assert panel and panel[0].startswith(FIRST_PANEL[findings[0]["code"]]), panel
    # the address reopens the same session, zoom and finding
    assert at.query_params["session"] == CPU.stem
    assert float(at.query_params["t0"]) == pytest.approx(shown_start, abs=0.01)
    assert at.query_params["focus"].startswith(findings[0]["code"] + ":")


def test_overview_gpu_shows_device_memory(app: Any) -> None:
    at = go(app(GPU), "overview")
    rep, _ = report_memo(GPU)
    assert "GiB" in metric(at, "Peak GPU memory")
    peak = max(g["peak_used_bytes"] for g in rep["gpus"])
    assert metric(at, "Peak GPU memory") == f"{peak / 2**30:,.2f} GiB"
    assert metric(at, "Parallelism") == "TP=2"
    assert next(m for m in at.metric if m.label == "Parallelism").proto.delta == "2 workers"
    assert len(at.table) >= 3  # info, config, GPUs
    gpu_table = at.table[2].value
    assert set(gpu_table["GPU"].astype(int)) == set(load_session(GPU).gpus["device_index"])
    assert set(gpu_table["why shown"]) == {"the session's processes used it"}


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
    at.query_params["t0"] = "50"  # a link opened in a new browser session: its zoom is applied
    at.query_params["t1"] = "51"
    at.query_params["session"] = CPU.stem
    at.session_state[f"linked::{load_session(CPU).path}"] = False
    at.run()
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    assert showing.startswith("Showing **50.00 – 51.00 s**")
    go(at, "memory")  # the zoom survives a page change and stays in the address
    go(at, "timeline")
    showing = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    assert showing.startswith("Showing **50.00 – 51.00 s**")
    assert (at.query_params["t0"], at.query_params["t1"]) == ("50.000", "51.000")


def test_served_timeline_opens_on_the_spec_built_at_start(app: Any) -> None:
    """``dashboard.serve.warm`` builds the first session's Timeline spec with the same shape the
    page asks for, so opening the Timeline builds no new spec (a cold build costs ~0.2 s)."""
    dashboard_charts._TEMPLATES.clear()
    serve.warm([CPU])
    built = dict(dashboard_charts._TEMPLATES)
    assert len(built) == 1
    assert report_memo(CPU)  # warmed: the picker shows its headline without computing it
    at = go(app(CPU), "timeline")
    assert dashboard_charts._TEMPLATES == built
    template = next(iter(built.values()))
    assert len(charts(at)[0]["vconcat"]) == len(template["vconcat"])


def test_timeline_gpu_has_memory_panels(app: Any) -> None:
    at = go(app(GPU), "timeline")
    names = titles(charts(at)[0])
    assert any(n.startswith("GPU 0 (NVIDIA H200) memory by owner") for n in names)
    assert any(n.startswith("GPU 1 (NVIDIA H200) memory by owner") for n in names)
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
    # tensor parallel: one waterfall per worker, each naming its GPU
    assert sorted(n.split(":")[0] for n in names if "Worker rank" in n) == [
        "Worker rank 0 (pid 3058, GPU 0)", "Worker rank 1 (pid 3059, GPU 1)"]
    assert "GPU memory per process (NVML)" in names
    assert any("reserved vs allocated" in n for n in names)
    assert [n for n in names if n.endswith("by owner")] == ["GPU 0 (NVIDIA H200) by owner",
                                                          "GPU 1 (NVIDIA H200) by owner"]


def test_kv_cache_page(app: Any) -> None:
    at = go(app(CPU), "kv_cache")
    data = load_session(CPU)
    assert metric(at, "Capacity (blocks)") == f"{data.num_blocks():,}"
    assert metric(at, "Preemptions") == f"{int(report_memo(CPU)[0]['preemptions']):,}"
    storm = derive.preemption_episodes(data.preempting_steps(), 1.0)
    assert len(at.dataframe[0].value) == len(storm) >= 1
    at.select_slider(key="kv_episode_gap_s").set_value(0.05).run()
    fine = derive.preemption_episodes(data.preempting_steps(), 0.05)
    assert len(at.dataframe[0].value) == len(fine) > len(storm)
    assert len(charts(at)) == 2
    at.segmented_control(key="kv_unit").set_value("tokens").run()
    assert any("(tokens)" in n for s in charts(at) for n in titles(s))


def test_requests_page(app: Any) -> None:
    at = go(app(CPU), "requests")
    data = load_session(CPU)
    reqs = data.requests()
    assert len(charts(at)) == 9  # swimlanes, 5 latency histograms, preemptions, short/long, scatter
    assert titles(charts(at)[0])[0].startswith("Requests over time")
    table = at.dataframe[-1].value
    assert len(table) == len(reqs)
    pct = at.table[0].value.set_index("metric")
    assert pct.loc["TTFT", "p99"] == fmt_s(reqs["ttft_s"].quantile(0.99))
    assert {b.label for b in at.get("download_button")} >= {"Percentiles CSV", "Requests CSV"}
    next(s for s in at.slider if s.key.startswith("prompt_threshold::")).set_value(int(reqs["prompt_tokens"].max())).run()
    assert not at.exception


def test_replay_steps_and_plays(app: Any) -> None:
    at = go(app(CPU), "replay")
    data = load_session(CPU)
    first = float(data.steps.fine["t_lo_s"].min())
    key = f"cursor::{data.path}"
    assert at.session_state[key] == pytest.approx(first)
    assert metric(at, "Step time") == f"{first:.4f} s"
    # the first step has nothing before it: a line, not a table of n/a
    assert not at.dataframe and any("first recorded step" in c.value for c in at.caption)
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
    at.sidebar.selectbox[0].set_value(HEALTHY.stem).run()
    deltas = at.table[0].value.set_index("metric")
    ra, _ = report_memo(HEALTHY)
    rb, _ = report_memo(CPU)
    assert deltas.loc["preemptions", f"A: {HEALTHY.stem}"] == f"{ra['preemptions']:,}"
    assert deltas.loc["preemptions", f"B: {CPU.stem}"] == f"{rb['preemptions']:,}"
    assert deltas.loc["prefix hit rate", f"A: {HEALTHY.stem}"] == f"{ra['prefix_cache']['hit_rate']:.1%}"
    assert any("not comparable" in i.value for i in at.info)  # 96 vs 128 requests: no verdicts
    assert "B is" not in deltas  # no verdict anywhere: no empty verdict column
    assert len(charts(at)) == 5
    assert len(at.selectbox) >= 2
    at.button(key="compare_swap").click().run()
    swapped = at.table[0].value
    assert list(swapped.columns[1:3]) == [f"A: {CPU.stem}", f"B: {HEALTHY.stem}"]
    # a session file added from inside the dashboard becomes B (and joins every picker)
    fixed = SESSIONS / "kv_saturation_fixed.kvscope"
    at.text_input(key="compare_add_path").set_value(str(fixed)).run()
    [b for b in at.button if b.label == "Add"][0].click().run()
    assert not at.exception and not at.error
    assert at.table[0].value.columns[2] == "B: kv_saturation_fixed · added"
    assert "kv_saturation_fixed · added" in at.sidebar.selectbox[0].options[-1]
    # A (kv_saturation) re-run at 521 blocks: the prediction from A beside what B measured
    pred = at.table[-1].value.set_index("")
    assert pred.loc["preemptions"].tolist() == ["0", "0"]


def test_sessions_page_opens_a_session_and_keeps_it_across_pages(app: Any) -> None:
    """"Open" on the Sessions page and "Open in Timeline" both switch pages: the session chosen
    stays (st.switch_page drops a picker's widget state; the choice is kept apart)."""
    at = app(HEALTHY, CPU)
    at.button(key=f"open-{CPU.stem}").click().run()
    assert at.title[0].value == f"Overview · {CPU.stem}"
    at.button(key="finding-0").click().run()
    assert at.title[0].value == f"Timeline · {CPU.stem}"
    go(at, "sessions")
    assert at.sidebar.selectbox[0].value == CPU.stem


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
    # the Sessions page: one line for each file it cannot read, the good one listed as usual
    assert len(at.error) == 2 and "broken" in at.error[0].value and "newer than this kvscope" in at.error[1].value
    assert any(m.value == "healthy" or "healthy" in m.value for m in at.markdown)
    go(at, "overview")
    assert len(at.error) == 1 and "broken" in at.error[0].value
    assert "\n" not in at.error[0].value.strip()
    at.sidebar.selectbox[0].set_value("future").run()
    assert len(at.error) == 1 and "newer than this kvscope" in at.error[0].value
    at.sidebar.selectbox[0].set_value("healthy").run()
    assert not at.error and not at.exception
    assert at.title[0].value == "Overview · healthy"
    assert metric(at, "Engine steps") == f"{report_memo(HEALTHY)[0]['steps']:,}"
    go(at, "timeline")
    assert not at.error and len(charts(at)) == 1


PAGES = sorted(p.stem for p in (ROOT / "dashboard" / "views").glob("*.py") if p.stem != "__init__")
"""Every page of the app (a new view file is tested without being listed here)."""

FINDINGS = {
    "attach_pressure": {"PREEMPTION_STORM", "PREFIX_THRASH"},
    "multinode_tp2": set(),
    "multinode_dp2": {"KV_SATURATION"},
    "gpu_h200x2_multinode_dp": set(),
    "gpu_h200_fragmentation": {"GPU_MEMORY_PRESSURE"},
    "gpu_h200_healthy": {"QUEUEING", "KV_OVERPROVISIONED"},
    "gpu_h200_kv_pressure": {"KV_SATURATION", "PREEMPTION_STORM"},
    "gpu_h200_oom_runtime": {"OOM_RUNTIME"},
    "gpu_h200_oom_startup": {"OOM_STARTUP"},
    "gpu_h200x2_tp2": {"QUEUEING", "KV_OVERPROVISIONED"},
    "healthy": {"QUEUEING"},
    "kv_saturation": {"PREFIX_THRASH", "KV_SATURATION", "PREEMPTION_STORM"},
    "kv_saturation_fixed": {"KV_OVERPROVISIONED", "QUEUEING"},
    "prefix_thrash": {"PREFIX_THRASH"},
    "kv_forensics": {"KV_SATURATION", "PREEMPTION_STORM"},
    "disk_tier": {"QUEUEING", "KV_OVERPROVISIONED"},
    "prefix_below_block": {"PREFIX_BELOW_BLOCK"},
    "sliding_window": {"PREEMPTION_STORM", "PREFIX_THRASH"},
    "spec_ngram": {"QUEUEING"},
    "spec_ngram_off": {"QUEUEING"},
    "prefix_thrash_fixed": {"QUEUEING"},
    "gpu_h200_offload": {"PREFIX_THRASH"},
    "gpu_h200_offload_attach": {"PREEMPTION_STORM"},
    "gpu_h200_spec_eagle": {"KV_OVERPROVISIONED", "QUEUEING"},
    "gpu_h200_groups_granite": {"KV_OVERPROVISIONED"},
    "gpu_h200_groups_mla": {"KV_OVERPROVISIONED", "QUEUEING"},
    # 32 requests over two ranks of 2,000 blocks each: nothing to find
    "gpu_h200x2_dp2_moe": set(),
    "gpu_h200_spec_off": {"KV_OVERPROVISIONED", "QUEUEING"},
}
"""Finding codes each bundled session shows on its Overview."""


FIRST_PANEL = {"PREFIX_THRASH": "Prefix-cache hit rate", "KV_SATURATION": "KV cache usage",
               "PREEMPTION_STORM": "Preemptions per second", "QUEUEING": "Requests running"}
"""Title of the panel "Open in Timeline" puts first for each finding of the CPU sessions."""


def test_pages_hold_no_module_level_strings_but_their_docstring() -> None:
    """Streamlit's magic draws any bare string expression of a page script: an attribute
    docstring at module level lands on the page as text."""
    import ast

    for name in PAGES:
        tree = ast.parse((ROOT / "dashboard" / "views" / f"{name}.py").read_text())
        bare = [n.lineno for n in tree.body[1:] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                and isinstance(n.value.value, str)]
        assert not bare, (name, bare)


def test_every_page_is_tested() -> None:
    assert {"sessions", "overview", "timeline", "memory", "kv_cache", "requests", "replay", "compare",
            "live", "kv_events", "whatif", "simulate"} <= set(PAGES)
    assert set(FINDINGS) == {p.stem for p in SESSIONS.glob("*.kvscope")}


BARE = re.compile(r"(?<![\w.])(None|NaN|nan|<NA>)(?![\w.])")
"""A value not measured shown as Python/pandas would print it, instead of "n/a"."""


def page_texts(at: AppTest) -> list[str]:
    """Every text a user reads on the page: headings, text, callouts, metrics, table and grid
    cells, and the strings of every chart spec (titles, legends' labels, inline data)."""
    out = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                                "success", "error") for e in getattr(at, kind)]
    for m in at.metric:
        out += [m.label, m.value, m.proto.delta]
    for t in [*at.table, *at.dataframe]:
        df = t.value
        out += [str(c) for c in df.columns] + [str(v) for v in df.astype(object).to_numpy().ravel()]

    def strings(obj: Any) -> None:
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                strings(v)
        elif isinstance(obj, list):
            for v in obj:
                strings(v)

    for spec in charts(at):
        strings(spec)
    return out


def path_tooltips(spec: dict[str, Any]) -> list[str]:
    """Tooltip fields of line and area marks that vary along them. Vega binds a line's or an area's
    one path to its first point, so such a field reads the first point's value wherever it is
    hovered; only what the whole path shares (its series, as a nominal field) may be shown."""
    out: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            mark = obj.get("mark")
            kind = mark.get("type") if isinstance(mark, dict) else mark
            if kind in ("line", "area", "trail"):
                tips = (obj.get("encoding") or {}).get("tooltip") or []
                for t in tips if isinstance(tips, list) else [tips]:
                    if t.get("type") != "nominal" or (isinstance(mark, dict) and mark.get("point")):
                        out.append(f"{kind}: {t.get('field', t)}")
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(spec)
    return out


def bare(at: AppTest) -> list[str]:
    return sorted({t for t in page_texts(at) if BARE.search(t)})


@pytest.mark.parametrize("session", sorted(SESSIONS.glob("*.kvscope")), ids=lambda p: p.stem)
def test_every_page_opens_every_bundled_session(app: Any, session: Path) -> None:
    """CPU and GPU sessions, OOM ones included (no steps at all), in one AppTest per session: no
    page may raise, show an error, or read None/NaN; the same preemption count on Overview,
    Requests and KV cache; the cache size shown is blocks × bytes per block; the finding codes
    show on the Overview; no line or area shows a per-point value in its tooltip (it would be
    its first point's)."""
    at = app(session)
    rep, findings = report_memo(session)
    assert at.title[0].value == "Sessions"
    assert any(escape_markdown(rep["headline"]) in m.value for m in at.markdown)  # the picker's line
    assert state.picker_text(next(s for s in state.sources() if s.path == session)).endswith(rep["headline"])
    assert not bare(at), bare(at)
    preemptions: dict[str, str] = {}
    for page in ["overview", *[p for p in PAGES if p != "overview"]]:
        go(at, page)
        assert not at.error, (page, [e.value for e in at.error])
        headings = [h.value for h in [*at.title, *at.header]]
        assert headings and (page == "overview") == headings[0].startswith("Overview"), (page, headings)
        assert not bare(at), (page, bare(at))
        assert not [t for spec in charts(at) for t in path_tooltips(spec)], page
        labels = {m.label: m.value for m in at.metric}
        if page in ("overview", "requests", "kv_cache") and "Preemptions" in labels:
            preemptions[page] = labels["Preemptions"]
        if page == "overview":
            shown = [m.value for m in at.markdown]
            for f in findings:
                assert any(f["code"] in s for s in shown), f["code"]
            assert {f["code"] for f in findings} == FINDINGS[session.stem]
        if page == "kv_cache" and "KV cache held" in labels:
            per_block = rep["kv_cache"]["bytes_per_block"]  # not recorded by the CPU sessions: n/a
            held = rep["engine"]["num_gpu_blocks"] * per_block if per_block is not None else None
            assert rep["kv_cache"]["size_bytes"] == held
            assert labels["KV cache held"] == fmt_bytes(held)  # 1.50 MiB, not "0.00 GiB"
    if rep["preemptions"] is not None:
        assert preemptions == {p: f"{int(rep['preemptions']):,}" for p in ("overview", "requests", "kv_cache")}


def test_overview_tables_say_not_measured_never_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session without an engine (a plain torch process): no "None" in the info table, and an
    info line instead of an empty settings table."""
    at = go(open_app(monkeypatch, SESSIONS / "gpu_h200_fragmentation.kvscope"), "overview")
    cells = [str(v) for t in at.table for v in t.value.to_numpy().ravel()]
    assert cells and "None" not in cells and "nan" not in cells
    assert "n/a" in cells  # model and vLLM were not recorded
    assert any("No vLLM engine was created" in i.value for i in at.info)


def test_widget_choices_survive_a_page_change(app: Any) -> None:
    """Streamlit drops a widget's state when a run does not draw it: the rolling window, the KV
    unit and the replay cursor come back as the user left them after another page."""
    at = go(app(CPU), "timeline")
    at.select_slider(key="rolling_s").set_value(5).run()
    go(at, "kv_cache")
    at.segmented_control(key="kv_unit").set_value("tokens").run()
    go(at, "overview")
    go(at, "timeline")
    assert at.select_slider(key="rolling_s").value == 5
    go(at, "kv_cache")
    assert at.segmented_control(key="kv_unit").value == "tokens"


def _brush_twice(path: str, second_t0_s: float) -> None:
    """AppTest script: brush 1671.0342938159654–5013.1 s, then send the brush again from
    ``second_t0_s``; the zoom each time into session_state."""
    import streamlit as st

    from dashboard import state
    from dashboard.data.session import load_session

    data = load_session(path)
    state.set_zoom(data, 16.710342938159654, 50.131, by_brush=True)
    st.session_state["first"] = st.session_state[state.zoom_key(data)]
    state.set_zoom(data, second_t0_s, 50.131, by_brush=True)
    st.session_state["second"] = st.session_state[state.zoom_key(data)]


@pytest.mark.parametrize(("second_t0_s", "moved"), [(16.710342938159656, False), (16.72, True)])
def test_a_brush_sent_again_after_a_redraw_is_the_same_zoom(second_t0_s: float, moved: bool) -> None:
    """The chart sends its brush again after a redraw, a float ulp off (seen in Chromium on the
    10M-step session: ...9654 came back as ...9656): that is the zoom already shown, kept as it
    was (no second read and redraw of every panel); a real move, however small, is a new zoom."""
    at = AppTest.from_function(_brush_twice, args=(str(CPU), second_t0_s), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    first, second = at.session_state["first"], at.session_state["second"]
    assert first == (16.710342938159654, 50.131)
    assert second == ((second_t0_s, 50.131) if moved else first)


def test_a_timeline_rerun_with_nothing_changed_rebuilds_no_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rerun that a brush sent again after a redraw makes (the same zoom) reuses the linked
    chart it drew; a change of what the chart shows (the rolling window) builds a new one."""
    built: list[float] = []
    real = timeline_charts.linked_chart

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(float(args[5] if len(args) > 5 else kwargs.get("rolling_s", 0.0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(timeline_charts, "linked_chart", counted)
    at = go(open_app(monkeypatch, CPU), "timeline")
    n = len(built)
    assert n >= 1
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(built) == n
    at.select_slider(key="rolling_s").set_value(5).run()
    assert not at.exception, [e.value for e in at.exception]
    assert built[n:] == [5.0]
