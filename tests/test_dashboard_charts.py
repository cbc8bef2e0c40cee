"""Chart builders checked through ``chart.to_dict()``: fields, encodings, and bounded data sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import pytest

from dashboard.charts import kv_cache as charts_kv
from dashboard.charts import memory as charts_memory
from dashboard.charts import panels as charts
from dashboard.charts import requests as cr
from dashboard.data import derive, replay
from dashboard.data.attribution import device_attribution
from dashboard.data.downsample import minmax_frame
from dashboard.data.session import SessionData, load_session
from dashboard.data.steps import SPLIT_ROWS, View, query_buckets
from tests.support.big_session import build_big_session

ROOT = Path(__file__).resolve().parent.parent
CPU_SESSION = ROOT / "sessions" / "kv_saturation.kvscope"
GPU_SESSION = ROOT / "sessions" / "gpu_h200x2_tp2.kvscope"


def layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every unit view of a (possibly layered/concatenated) spec."""
    out = []
    for key in ("layer", "vconcat", "hconcat"):
        for sub in spec.get(key, []):
            out.extend(layers(sub))
    if "mark" in spec:
        out.append(spec)
    return out


def rows_of(spec: dict[str, Any]) -> int:
    """Rows of all inline datasets of a spec."""
    return sum(len(v) for v in spec.get("datasets", {}).values())


def encoding_fields(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(ch, enc["field"]) for lay in layers(spec) for ch, enc in lay.get("encoding", {}).items()
            if isinstance(enc, dict) and "field" in enc}


@pytest.fixture(scope="module")
def cpu() -> SessionData:
    return load_session(CPU_SESSION)


@pytest.fixture(scope="module")
def gpu() -> SessionData:
    return load_session(GPU_SESSION)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> SessionData:
    """~300k real steps: the kv_saturation session replicated back to back."""
    path = tmp_path_factory.mktemp("big") / "big.kvscope"
    n = build_big_session(CPU_SESSION, path, 300_000)
    assert n >= 300_000
    return load_session(path)


def serving_view(data: SessionData, buckets: int = 300) -> View:
    f = data.steps.fine
    return View(float(f["t_lo_s"].min()), float(f["t_hi_s"].max()), buckets)


def test_timeline_panels_fields_and_axes(cpu: SessionData) -> None:
    view = serving_view(cpu)
    b = cpu.buckets(view)
    built = {
        "kv": charts.kv_usage_chart(b, view, cpu.num_blocks()),
        "queue": charts.queue_chart(b, view),
        "preempt": charts.preemption_panel(b, view, smooth_s=0.5).chart(),
        "hit": charts.prefix_hit_panel(b, view, 1.0).chart(),
        "tput": charts.throughput_chart(b, view, smooth_s=0.5),
    }
    expected_y = {"kv": "hi", "queue": "hi", "preempt": "per_s", "hit": "hit_rate_frac",
                  "tput": "per_s"}
    for name, chart in built.items():
        spec = chart.to_dict()
        fields = encoding_fields(spec)
        assert ("x", "t_s") in fields, name
        assert ("y", expected_y[name]) in fields, name
        xs = [lay["encoding"]["x"] for lay in layers(spec) if "x" in lay.get("encoding", {})]
        scaled = [x for x in xs if "scale" in x]
        assert scaled and all(x["scale"]["domain"] == [view.t0_s, view.t1_s] for x in scaled), name
        assert xs[0]["title"] == charts.TIME_TITLE
        assert spec["title"], name
    assert ("color", "state") in encoding_fields(built["queue"].to_dict())
    for name in ("kv", "queue"):  # min-max bands: from each bucket's lowest to its highest value
        assert ("y2", "lo") in encoding_fields(built[name].to_dict()), name
    kv_spec = built["kv"].to_dict()
    assert any(lay["encoding"]["y"].get("axis", {}).get("format") == "%" for lay in layers(kv_spec)
               if "y" in lay["encoding"] and "field" in lay["encoding"]["y"])
    assert str(cpu.num_blocks()) in kv_spec["title"]
    preempt = charts.preemption_panel(b, view, smooth_s=0.5)
    assert [lay["mark"]["type"] for lay in layers(preempt.chart().to_dict())][:2] == ["area", "rect"]
    # the strip along the bottom: one rect per run of buckets, exactly the buckets that preempted
    strip = preempt.frames["strip"]
    marked = np.zeros(view.buckets)
    for t0, t1 in zip(strip["t_s"], strip["t_end_s"], strict=True):
        marked[int(round((t0 - view.t0_s) / view.width_s)):int(round((t1 - view.t0_s) / view.width_s))] += 1
    preempting = np.zeros(view.buckets)
    preempting[b.loc[b["preemptions"] > 0, "bucket"].to_numpy(dtype=int)] = 1
    assert preempting.sum() > 0 and (marked == preempting).all()  # the storm preempts


def test_hit_rate_per_bucket_is_one_step_per_bucket_one_line_per_run(cpu: SessionData) -> None:
    view = serving_view(cpu)
    b = cpu.buckets(view)
    points = derive.hit_rate_series(b, view, 1.0)
    per_bucket = points[points["series"] == points["series"].iloc[0]]
    seg = derive.bucket_segments(per_bucket, view, "hit_rate_frac")
    # a bucket without queries between two that had some starts a new run: a new line, not a join
    idx = np.floor((per_bucket["t_s"].to_numpy() - view.t0_s) / view.width_s).astype(int)
    runs = 1 + int((np.diff(idx) > 1).sum())
    assert runs > 1 and seg["run"].nunique() == runs
    # a row at each bucket's start, one more at the end of each run (where its step-after line stops)
    assert len(seg) == len(per_bucket) + runs and seg["hit_rate_frac"].notna().all()
    for _, line in seg.groupby("run"):
        t, v = line["t_s"].to_numpy(), line["hit_rate_frac"].to_numpy()
        assert np.allclose(np.diff(t), view.width_s) and v[-1] == v[-2]
    starts = seg.groupby("run").head(-1)
    assert np.allclose(starts["t_s"].to_numpy() + view.width_s / 2, per_bucket["t_s"].to_numpy())
    assert (starts["hit_rate_frac"].to_numpy() == per_bucket["hit_rate_frac"].to_numpy()).all()


def test_kv_and_queue_bands_hold_each_buckets_lowest_and_highest_value(cpu: SessionData) -> None:
    view = serving_view(cpu, 3000)  # buckets of a few steps, and empty ones between some
    b = cpu.buckets(view)
    for col, band in (("kv_usage_frac", derive.kv_band(b)),
                      ("waiting", derive.queue_band(b).query("state == 'waiting'"))):
        rows = b.dropna(subset=[f"{col}_min"]).sort_values("t_lo_s")
        assert rows["engine_id"].nunique() == 1
        # a row per bucket at its first step with its lowest and highest value; before empty
        # buckets the band narrows to the bucket's max at its last step; it ends at the last step
        expected: list[tuple[float, float, float]] = []
        idx = rows["bucket"].to_numpy()
        for i, r in enumerate(rows.itertuples()):
            lo, hi = getattr(r, f"{col}_min"), getattr(r, f"{col}_max")
            expected.append((r.t_lo_s, lo, hi))
            if i == len(rows) - 1:
                expected.append((r.t_hi_s, lo, hi))
            elif idx[i + 1] - idx[i] > 1:
                expected.append((r.t_hi_s, hi, hi))
        assert len(expected) > len(rows) + 1, col  # this view has empty buckets
        got = list(band[["t_s", "lo", "hi"]].itertuples(index=False, name=None))
        assert got == expected, col
        assert (band["hi"] > band["lo"]).any(), col


def test_timeline_panels_keep_their_own_colour_scales() -> None:
    """Stacked panels share a scale of a channel unless resolved apart: the queue's explicit
    running/waiting stroke scale, shared, left a DP session's KV bands without outlines."""
    from dashboard.charts import timeline as tl

    data = load_session(ROOT / "sessions" / "multinode_dp2.kvscope")
    view = View(*data.serving_range(), tl.BUCKETS)
    linked = tl.linked_chart(data, view, data.buckets(view), data.buckets(tl.whole_view(data)), None)
    spec = linked.template
    scaled = {ch for lay in layers(spec) for ch, enc in lay.get("encoding", {}).items()
              if isinstance(enc, dict) and "field" in enc and enc.get("scale", {}) is not None
              and ch not in ("x", "x2", "y", "y2", "tooltip", "detail", "text")}
    assert {"color", "stroke"} <= scaled  # engines (KV bands) and states (queue) both
    assert all(spec["resolve"]["scale"].get(ch) == "independent" for ch in scaled), scaled


def test_replay_cursor_is_drawn_on_the_time_axis(cpu: SessionData) -> None:
    view = serving_view(cpu)
    cursor = (view.t0_s + view.t1_s) / 2
    spec = charts.kv_usage_chart(cpu.buckets(view), view, cpu.num_blocks(), cursor_s=cursor).to_dict()
    rules = [lay for lay in layers(spec) if lay["mark"]["type"] == "rule"
             and lay["encoding"].get("x", {}).get("field") == "t_s"]
    assert len(rules) == 1
    cursor_rows = [v for v in spec["datasets"].values() if v and v[0].get("label") == "replay cursor"]
    assert cursor_rows[0][0]["t_s"] == pytest.approx(cursor)


def test_large_session_arrives_downsampled(big: SessionData) -> None:
    assert big.steps.total_steps >= 300_000
    whole = View(0.0, big.duration_s, 400)
    b = big.buckets(whole)
    assert len(b) <= 400
    for chart in (charts.kv_usage_chart(b, whole, big.num_blocks()), charts.queue_chart(b, whole),
                  charts.throughput_chart(b, whole, smooth_s=5.0)):
        assert 0 < rows_of(chart.to_dict()) <= 2 * 2 * 400 + 10
    nav = charts.navigator_panel(b, whole, None, 40.0)
    view = serving_view(big, 400)
    panels = [charts.kv_usage_panel(big.buckets(view), view, big.num_blocks()),
              charts.queue_panel(big.buckets(view), view)]
    linked = charts.linked_timeline(nav, panels, view)
    spec = linked.spec()
    assert linked.rows() <= 400 + 2 * 400 + 4 * 400 + 10
    assert spec["autosize"]["type"] == "fit-x"
    brush = [p for p in spec.get("params", []) if p["name"] == charts.ZOOM_PARAM] or [
        p for lay in layers(spec) for p in lay.get("params", []) if p["name"] == charts.ZOOM_PARAM]
    assert brush and brush[0]["select"]["encodings"] == ["x"]
    # Every panel follows the brush; data are named so a zoom keeps the spec identical.
    bound = [lay["encoding"]["x"]["scale"]["domain"] for lay in layers(spec)[2:]
             if "x" in lay.get("encoding", {}) and "scale" in lay["encoding"]["x"]]
    assert bound and all(d == {"param": charts.ZOOM_PARAM, "encoding": "x"} for d in bound)
    zoom = View(view.t0_s + 100, view.t0_s + 130, 400)
    nav2 = charts.navigator_panel(b, whole, None, 40.0)
    panels2 = [charts.kv_usage_panel(big.buckets(zoom), zoom, big.num_blocks()),
               charts.queue_panel(big.buckets(zoom), zoom)]
    spec2 = charts.linked_timeline(nav2, panels2, zoom).spec()
    strip = {k: v for k, v in spec.items() if k != "datasets"}
    strip2 = {k: v for k, v in spec2.items() if k != "datasets"}
    assert strip == strip2
    assert spec["datasets"].keys() == spec2["datasets"].keys()


def test_deep_zoom_reads_raw_steps(big: SessionData) -> None:
    f = big.steps.fine
    t0 = float(f["t_lo_s"].iloc[len(f) // 2])
    view = View(t0, t0 + big.steps.fine_width_s * 3, 300)
    assert big.steps.needs_raw(view)
    b = big.buckets(view)
    assert 0 < len(b) <= 300
    assert (b["n_steps"] >= 1).all()


def test_a_long_raw_read_in_two_halves_equals_the_read_in_one(big: SessionData) -> None:
    f = big.steps.fine
    t0 = float(f["t_lo_s"].iloc[len(f) // 4])
    view = View(t0, t0 + 200.0, 4000)  # fine enough to read raw steps, long enough to split
    assert big.steps.needs_raw(view)
    lo, hi = big.steps.rowid_range(view)
    assert hi - lo > SPLIT_ROWS
    halves = big.buckets(view)
    with big.open() as session:
        one = query_buckets(session, big.start_unix_s, view, (lo, hi), big.steps.checked)
    assert len(one) > 3000 and one["bucket"].is_unique  # the bucket the halves share is merged once
    pd.testing.assert_frame_equal(halves, one)


def test_memory_charts_on_gpu_session(gpu: SessionData) -> None:
    whole = View(0.0, gpu.duration_s, 300)
    dev = int(gpu.gpu_samples["device_index"].iloc[0])
    total = float(gpu.gpus[gpu.gpus["device_index"] == dev]["total_bytes"].iloc[0])
    df = device_attribution(gpu, dev, whole.t0_s, whole.t1_s, whole.buckets, None)
    spec = charts_memory.attribution_panel(df, whole, "GPU", total).chart().to_dict()
    assert ("y", "gib") in encoding_fields(spec) and ("color", "band") in encoding_fields(spec)
    assert any(lay["mark"]["type"] == "area" for lay in layers(spec))
    proc = minmax_frame(gpu.gpu_process_samples.dropna(subset=["used_bytes"]), "t_s", ["used_bytes"],
                        whole.t0_s, whole.t1_s, whole.buckets, by="process")
    pspec = charts_memory.process_memory_chart(proc, whole).to_dict()
    assert ("color", "holder") in encoding_fields(pspec)  # one colour per process and GPU
    holders = {r["holder"] for v in pspec["datasets"].values() for r in v}
    assert holders == {"worker 0 (pid 3058) · GPU 0", "worker 1 (pid 3059) · GPU 1"}  # TP=2 told apart
    aspec = charts_memory.allocator_chart(gpu.allocator_samples, whole).to_dict()
    assert ("color", "process") in encoding_fields(aspec)
    measures = {r["measure"] for v in aspec["datasets"].values() for r in v}
    assert measures == {"reserved", "allocated"}
    wf = derive.startup_waterfall(gpu.startup_memory.iloc[0])
    wspec = charts_memory.waterfall_chart(wf, "start-up").to_dict()
    assert ("x", "start_gib") in encoding_fields(wspec) and ("x2", "end_gib") in encoding_fields(wspec)


def test_kv_page_charts(cpu: SessionData) -> None:
    view = serving_view(cpu)
    b = cpu.buckets(view)
    ep = derive.preemption_episodes(cpu.preempting_steps(), 0.05)
    spec = charts_kv.kv_capacity_chart(b, view, cpu.num_blocks(), cpu.block_size_tokens(), "tokens", ep).to_dict()
    caps = [r["cap"] for v in spec["datasets"].values() for r in v if "cap" in r]
    assert caps == [cpu.num_blocks() * cpu.block_size_tokens()]
    assert any(lay["mark"]["type"] == "rect" for lay in layers(spec))  # episodes shaded
    demand = derive.kv_demand(cpu.requests(), view)
    dspec = charts_kv.kv_demand_chart(demand, view, caps[0], ep).to_dict()
    assert ("y", "demand_tokens") in encoding_fields(dspec)


def test_request_charts(cpu: SessionData) -> None:
    reqs = cpu.requests()
    h = cr.latency_histogram(reqs["ttft_s"], "TTFT").to_dict()
    bars = [v for v in h["datasets"].values() if v and "count" in v[0]]
    assert sum(r["count"] for r in bars[0]) == reqs["ttft_s"].notna().sum()
    assert len(bars[0]) == cr.HIST_BINS
    assert "p95" in h["title"]["subtitle"]
    pp = cr.preemptions_per_request_chart(reqs).to_dict()
    counts = {r["preemptions"]: r["requests"] for v in pp["datasets"].values() for r in v}
    assert sum(counts.values()) == reqs["preemptions"].notna().sum() == len(reqs)
    missing = reqs.assign(preemptions=float("nan"))  # vLLM 0.26 reports no per-request count
    pp = cr.preemptions_per_request_chart(missing).to_dict()
    assert not [r for v in pp["datasets"].values() for r in v]  # not counted as "0 times"
    split = derive.split_by_prompt(reqs, float(reqs["prompt_tokens"].median()))
    sl = cr.short_long_chart(split).to_dict()
    assert ("xOffset", "group") in encoding_fields(sl)
    assert cr.prompt_scatter(reqs).to_dict()["mark"]["type"] == "circle"
    sc = json.dumps(cr.prompt_scatter(missing, groups={"0": "prefix A"}).to_dict())
    assert "NaN" not in sc and '"preemptions"' not in sc  # coloured by prefix, not by an unmeasured count


def test_kv_blocks_picture_groups_large_caches() -> None:
    small = replay.kv_blocks_picture(7, 20).to_dict()
    data = next(iter(small["datasets"].values()))
    assert len(data) == 20 and sum(r["state"] == "used" for r in data) == 7
    large = replay.kv_blocks_picture(50_000, 113_371).to_dict()
    data = next(iter(large["datasets"].values()))
    assert len(data) <= replay.MAX_SQUARES
    assert "one square = 222 blocks" in large["title"]


def test_compare_chart(cpu: SessionData) -> None:
    df = pd.DataFrame({"t_s": [0.0, 1.0, 0.0, 1.0], "waiting": [1, 2, 3, 4],
                       "session": ["A: x", "A: x", "B: y", "B: y"]})
    spec = charts.compare_chart(df, "waiting", "Waiting", "requests").to_dict()
    assert ("color", "session") in encoding_fields(spec)
    assert isinstance(charts.compare_chart(df, "waiting", "W", "r"), alt.Chart)
