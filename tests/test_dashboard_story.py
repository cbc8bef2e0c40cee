"""Issue 12's rules on the bundled sessions, below the pages: one headline per session, the KV cache
held (blocks × bytes per block) apart from start-up's measurement, only the GPUs that matter, who
holds a GPU's memory when it ran out, marks, one recommendation per finding with its flags, the
scheduler model that predicts a fix. Cheap: reports come from the process-wide memo."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dashboard.charts import requests as cr
from dashboard.charts import timeline as tl
from dashboard.data import compare, derive, summary, tables
from dashboard.data import marks as mk
from dashboard.data.attribution import device_attribution, shown_devices
from dashboard.data.kv_whole import forensics_memo, preemption_times, with_recorded_preemptions
from dashboard.data.reports import report_memo
from dashboard.data.session import load_session_memo
from dashboard.data.steps import View
from dashboard.data.swimlanes import NO_PREFIX, prefix_groups, request_spans, session_spans
from profiler.analysis import simulate as sim
from profiler.analysis.fixes import diff_text, flag_changes, flags_line, same_fix_as
from profiler.analysis.kv_size import kv_cache_size
from profiler.analysis.report import format_text
from profiler.session.reader import open_session
from profiler.units import fmt_gib

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = sorted((ROOT / "sessions").glob("*.kvscope"))
S = {p.stem: p for p in SESSIONS}
BARE = re.compile(r"(?<![\w.])(None|NaN|nan)(?![\w.])")


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.stem)
def test_text_report_and_key_numbers_never_say_none(path: Path) -> None:
    rep, findings = report_memo(path)
    text = format_text(rep)
    assert not BARE.findall(text), BARE.findall(text)
    assert text.splitlines()[0] == f"summary   {rep['headline']}"
    numbers = summary.key_numbers(rep)
    assert numbers and not [n for n in numbers if BARE.search(n.text) or "n/a" in n.value]
    if rep["preemptions"] is not None:
        assert next(n.value for n in numbers if n.key == "preemptions") == f"{int(rep['preemptions']):,}"
    for f in findings:  # one recommendation per finding: never "...; or ..."
        assert " or --" not in (f.get("recommendation") or ""), f["code"]
        assert "; or " not in (f.get("recommendation") or ""), f["code"]


def test_kv_cache_held_is_blocks_times_bytes_per_block_not_start_ups_room() -> None:
    rep, _ = report_memo(S["gpu_h200_kv_pressure"])
    with open_session(S["gpu_h200_kv_pressure"]) as s:
        size = kv_cache_size(s)
    assert (size.num_blocks, size.bytes_per_block) == (600, 2 * 2**20)
    assert rep["kv_cache"]["size_bytes"] == size.size_bytes == 600 * 2 * 2**20
    assert size.capped and size.startup_room_blocks == 52_941 and size.startup_kv_bytes > 100 * 2**30
    card = next(n for n in summary.key_numbers(rep) if n.key == "kv_size")
    assert (card.value, card.detail) == ("600 blocks", fmt_gib(600 * 2 * 2**20))
    text = format_text(rep)
    assert "600 blocks x 16 tokens = 9,600 tokens, 1.17 GiB (2.00 MiB per block)" in text
    assert "room measured for KV 103.40 GiB (52,941 blocks; the cache was capped at 600)" in text
    oom, _ = report_memo(S["gpu_h200_oom_startup"])  # no room at all: a shortfall, not "KV -5.01 GiB"
    text = format_text(oom)
    assert "KV -" not in text and "no room for a KV cache (5.01 GiB short)" in text
    assert "KV cache  none: start-up was 5.01 GiB short of any KV cache memory" in text
    tp, _ = report_memo(S["gpu_h200x2_tp2"])
    assert "TP=2, 2 workers" in format_text(tp)
    assert [(n.value, n.detail) for n in summary.key_numbers(tp) if n.key == "parallel"] == [("TP=2", "2 workers")]


def test_only_the_gpus_that_matter_are_shown() -> None:
    for name, shown in (("gpu_h200_kv_pressure", {0}), ("gpu_h200_oom_runtime", {0}),
                        ("gpu_h200x2_tp2", {0, 1}), ("gpu_h200_fragmentation", {0})):
        rep, findings = report_memo(S[name])
        assert {g["index"] for g in rep["gpus"] if g["shown"]} == shown, name
        assert set(shown_devices(load_session_memo(S[name]), findings)) == shown, name
        hidden = len(rep["gpus"]) - len(shown)
        assert (f"({hidden} other GPU" in format_text(rep)) == bool(hidden)


def test_headlines_name_what_happened() -> None:
    lines = {n: report_memo(S[n])[0]["headline"] for n in (
        "gpu_h200_fragmentation", "gpu_h200_oom_startup", "gpu_h200_oom_runtime", "gpu_h200_kv_pressure",
        "healthy")}
    assert lines["gpu_h200_fragmentation"].startswith("no vLLM engine")
    assert "fragmentation" in lines["gpu_h200_fragmentation"]
    assert lines["gpu_h200_oom_startup"] == "the engine never started; out of memory at start-up"
    assert "pid 2777" in lines["gpu_h200_oom_runtime"]
    assert "KV cache full" in lines["gpu_h200_kv_pressure"]
    assert lines["healthy"].endswith("requests queued at max_num_seqs with KV to spare")


def test_the_runtime_oom_draws_the_foreign_process_that_took_the_memory() -> None:
    data = load_session_memo(S["gpu_h200_oom_runtime"])
    rep, findings = report_memo(S["gpu_h200_oom_runtime"])
    df = device_attribution(data, 0, 0.0, data.duration_s, 400, rep["kv_cache"]["size_bytes"])
    total = data.gpu_samples[data.gpu_samples["device_index"] == 0].set_index("t_s")["used_bytes"] / 2**30
    per_t = df.groupby("t_s")["gib"].sum()
    assert np.allclose(per_t.to_numpy(), total.loc[per_t.index].to_numpy(), atol=1e-6)  # bands add up
    oom_t = float(data.events[data.events["kind"] == "oom"]["t_s"].iloc[0])
    at = df[df["t_s"] == df["t_s"][df["t_s"] <= oom_t].max()].set_index("band")["gib"]
    assert at["pid 2777 (outside the session)"] == pytest.approx(21.47, abs=0.6)  # the OOM text's 21.47 GiB
    assert at["worker 0 (pid 2516): KV cache"] == pytest.approx(rep["kv_cache"]["size_bytes"] / 2**30)
    assert at["worker 0 (pid 2516): activations + other"] < 2.0  # no longer the 21 GiB of the other process
    before = df[(df["t_s"] < oom_t - 5) & (df["band"] == "pid 2777 (outside the session)")]
    assert before["gib"].max() < 0.1
    marks = mk.session_marks(data, findings)
    assert set(marks["kind"]) == {mk.ENGINE_START, mk.OOM, mk.FINDING}
    assert marks[marks["kind"] == mk.OOM]["t_s"].iloc[0] == pytest.approx(oom_t)
    assert mk.next_mark(marks, 0.0, 1, {mk.OOM}) == pytest.approx(oom_t)
    assert mk.next_mark(marks, oom_t, 1, {mk.OOM}) is None
    clipped = mk.in_view(marks, 0.0, 10.0)
    assert clipped.empty or (clipped["t_end_s"] <= 10.0).all()


def test_opening_a_finding_puts_the_panel_that_shows_it_first() -> None:
    data = load_session_memo(S["prefix_thrash"])
    rep, findings = report_memo(S["prefix_thrash"])
    (thrash,) = [f for f in findings if f["code"] == "PREFIX_THRASH"]
    first_step = float(data.steps.fine["t_lo_s"].min())
    assert thrash["t_start_s"] >= first_step and thrash["t_end_s"] - thrash["t_start_s"] > 2.0  # the serving, not a warm-up second
    keys = tl.panel_keys(data, findings)
    assert keys == ["kv", "queue", "preempt", "hit", "tput"]  # CPU session: no GPU panel
    assert tl.ordered_keys(keys, "PREFIX_THRASH")[0] == "hit"
    assert tl.ordered_keys(["gpu:0", *keys], "KV_SATURATION")[:2] == ["kv", "gpu:0"]
    assert tl.ordered_keys(keys, "SOMETHING_NEW") == keys
    marks = mk.session_marks(data, findings, (thrash["t_start_s"], thrash["t_end_s"], "PREFIX_THRASH"))
    focus = marks[marks["kind"] == mk.FOCUS]
    assert len(focus) == 1 and focus["t_end_s"].iloc[0] == pytest.approx(thrash["t_end_s"])


def test_fix_flags_and_repeated_recommendations() -> None:
    rep, findings = report_memo(S["gpu_h200_kv_pressure"])
    sat = next(f for f in findings if f["code"] == "KV_SATURATION")
    changes = flag_changes(sat["settings"], {"num_gpu_blocks": 600})
    assert flags_line(changes) == f"--num-gpu-blocks-override {sat['settings']['num_gpu_blocks_override']}"
    assert "--max-num-seqs" not in sat["recommendation"]  # the crippling alternative is gone
    assert diff_text(changes, "/m").splitlines() == [
        "  vllm serve /m ...", "# --num-gpu-blocks-override: not set; the engine ran with 600 blocks",
        f"+ --num-gpu-blocks-override {sat['settings']['num_gpu_blocks_override']}"]
    assert same_fix_as(findings) == {1: "KV_SATURATION"}  # PREEMPTION_STORM: "same fix as" above
    assert "-> same fix as KV_SATURATION above" in format_text(rep)
    util = flag_changes({"gpu_memory_utilization": 0.69}, {"gpu_memory_utilization": 0.85},
                        ["vllm", "serve", "m", "--gpu-memory-utilization", "0.85"])
    assert diff_text(util).splitlines()[1:] == ["- --gpu-memory-utilization 0.85", "+ --gpu-memory-utilization 0.69"]


def test_swimlanes_lay_out_queue_prefill_decode_and_shared_prefixes() -> None:
    data = load_session_memo(S["kv_saturation"])
    reqs = data.requests()
    with data.open() as s:
        groups = prefix_groups(s.table("prompt_blocks"))
    assert {g for g in groups.values() if g != NO_PREFIX} == {"prefix A", "prefix B", "prefix C", "prefix D"}
    spans = request_spans(reqs, groups, 0.0, data.duration_s)
    r = reqs.set_index(reqs["request_id"].astype(str)).iloc[0]
    mine = spans[spans["request_id"] == str(reqs["request_id"].iloc[0])].set_index("phase")
    assert list(mine.index) == ["queued", "prefill", "decode"]
    assert mine.loc["decode", "t_end_s"] - mine.loc["queued", "t_s"] == pytest.approx(
        r["queued_s"] + r["prefill_s"] + r["decode_s"])
    assert spans["lane"].nunique() == len(reqs) and spans.attrs["hidden"] == 0


@pytest.mark.parametrize("name", ["kv_forensics", "prefix_below_block"])
def test_swimlanes_draw_each_recorded_preemption_until_its_resume(name: str) -> None:
    """One black span per preemption the engine core recorded, on its request's lane, from the
    preemption to the resume: as many as the report's (and Overview's) preemption count."""
    data = load_session_memo(S[name])
    reqs = data.requests()
    rep, _ = report_memo(S[name])
    table = forensics_memo(S[name]).table
    spans = session_spans(data, reqs, 0.0, data.duration_s)
    pre = spans[spans["phase"] == "preempted"].sort_values("t_s").reset_index(drop=True)
    assert len(pre) == len(table) == rep["preemptions"] == int(reqs["preemptions"].sum()) > 0
    assert list(pre["request_id"]) == list(table["request_key"].astype(str))
    assert np.allclose(pre["t_s"], table["t_s"]) and np.allclose(pre["t_end_s"], table["resumed_s"])
    lanes = spans[spans["phase"] != "preempted"].groupby("request_id").agg(
        lane=("lane", "first"), lo=("t_s", "min"), hi=("t_end_s", "max"))
    mine = lanes.loc[pre["request_id"]]
    assert (mine["lane"].to_numpy() == pre["lane"].to_numpy()).all()
    assert ((pre["t_s"].to_numpy() >= mine["lo"].to_numpy() - 0.01)
            & (pre["t_end_s"].to_numpy() <= mine["hi"].to_numpy() + 0.01)).all()
    chart = cr.swimlane_chart(spans, View(0.0, data.duration_s, 400)).to_dict()
    black = [layer for layer in chart["layer"] if layer["mark"].get("color") == "#111111"]
    assert len(black) == 1 and len(chart["datasets"][black[0]["data"]["name"]]) == len(table)
    assert "preempted until resumed" in chart["title"]["subtitle"]


def test_timeline_and_episodes_place_recorded_preemptions_at_their_own_time() -> None:
    """vLLM's step counter counts a preemption when the request next returns output (kv_forensics:
    the first at 127.55 s, 0.37 s after the engine core preempted it at 127.18 s). With each
    preemption recorded, the Timeline's rate panel and the KV cache episodes use the record."""
    path = S["kv_forensics"]
    data = load_session_memo(path)
    f = forensics_memo(path)
    steps = data.preempting_steps()
    assert steps["t_s"].min() > f.table["t_s"].min() + 0.3  # the counter trails the preemption
    view = View(*data.serving_range(), 400)
    b = with_recorded_preemptions(data.buckets(view), f, view)
    strip = derive.preemption_strip(b, view)
    assert b["preemptions"].sum() == len(f.table) == 17
    first_marked = strip["t_s"].min()  # the strip's first run starts at the first preemption's bucket
    assert first_marked <= f.table["t_s"].min() < first_marked + view.width_s
    times = preemption_times(f, steps)
    assert list(times["t_s"]) == sorted(f.table["t_s"]) and times["waiting"].notna().all()
    ep = derive.preemption_episodes(times, 1.0)
    assert ep["t_start_s"].iloc[0] == f.table["t_s"].min() and ep["preemptions"].sum() == 17
    nf = forensics_memo(S["kv_saturation"])  # not recorded: vLLM's steps, unchanged
    bare = load_session_memo(S["kv_saturation"]).preempting_steps()
    assert not nf.recorded and preemption_times(nf, bare).equals(bare) and len(bare) > 0


def test_swimlanes_without_a_per_preemption_record_draw_no_preempted_span() -> None:
    data = load_session_memo(S["kv_saturation"])
    reqs = data.requests()
    spans = session_spans(data, reqs, 0.0, data.duration_s)
    assert (spans["phase"] == "preempted").sum() == 0
    assert spans.loc[spans["preemptions"].fillna(0) > 0, "request_id"].nunique() == int((reqs["preemptions"] > 0).sum()) > 0


def test_tables_show_not_measured_as_na() -> None:
    reqs = load_session_memo(S["gpu_h200_kv_pressure"]).requests()
    shown = tables.shown(reqs)
    assert "preemptions" in shown.attrs["not_measured"]  # vLLM 0.26: not reported, left out
    text = shown.astype(str).to_numpy().ravel()
    assert not [v for v in text if BARE.fullmatch(v) or v == "<NA>"]


def test_scheduler_model_matches_the_session_and_predicts_the_fix() -> None:
    """The model at the recorded 20 blocks preempts as the session did (within ×2: 105 vs 71
    measured when written), and at KV_SATURATION's 521 blocks predicts none, as the re-run in
    test_diagnosis_fixes measures; shrinking max_num_seqs to fit 20 blocks queues the requests."""
    with open_session(S["kv_saturation"]) as s:
        m = sim.model(s)
    measured = m.measured["preemptions"]
    assert measured == 71 and 0.5 * measured <= m.baseline.preemptions <= 2 * measured
    assert m.baseline.finished == len(m.demand.requests) == 128
    assert m.baseline.queued_p50_s == pytest.approx(m.measured["queued_p50_s"], rel=0.5)
    fixed = m.predict(m.settings_for({"num_gpu_blocks_override": 521})[0])
    assert fixed.preemptions == 0 and fixed.queued_p50_s < 0.2 * m.baseline.queued_p50_s
    assert fixed.prefix_hit_rate == pytest.approx(m.curve.hit_rate(521))  # the what-if curve's number
    small = m.predict(m.settings_for({"max_num_seqs": 2})[0])
    assert small.preemptions == 0 and small.e2e_p95_s > m.baseline.e2e_p95_s  # no preemption, slower


def test_scheduler_model_on_a_synthetic_demand() -> None:
    """Two prompts sharing 2 blocks of 4 tokens: ample cache → no preemption, the second hits the
    shared blocks; a cache too small for both → preemptions; max_num_seqs 1 → they queue."""
    same = (11, 12)
    reqs = [sim.SimRequest(str(i), 0.01 * i, 12, 8, (*same, 100 + i)) for i in range(4)]
    demand = sim.Demand(1, 4, reqs, 0.01, 0.0, sim.Settings(64, 8, 64))
    big = sim.run(demand, sim.Settings(64, 8, 64))
    assert big.preemptions == 0 and big.finished == 4 and big.model_hit_rate > 0
    tight = sim.run(demand, sim.Settings(9, 8, 64))
    assert tight.preemptions > 0 and tight.finished == 4
    serial = sim.run(demand, sim.Settings(64, 1, 64))
    assert serial.preemptions == 0 and serial.queued_p50_s > big.queued_p50_s


def test_scheduler_model_finds_the_size_the_what_if_curve_misses_under_concurrency() -> None:
    """prefix_thrash: 16 prefixes of 8 blocks, 8 requests at once. The what-if curve asks for 133
    blocks (87.1 %); with 8 running requests' partial blocks the scheduler model keeps the prefixes
    only from 137 on, and at 133 predicts 43.6 % -- what a real re-run at 133 measured (43.6 %).
    The bundled re-run at 137 (prefix_thrash_fixed) measured 87.1 % with no PREFIX_THRASH."""
    with open_session(S["prefix_thrash"]) as s:
        m = sim.model(s)
    assert m.curve.blocks_for(0.9) == 133
    at_133 = m.predict(m.settings_for({"num_gpu_blocks_override": 133})[0])
    assert at_133.prefix_hit_rate == pytest.approx(0.871, abs=0.001)  # the curve's number
    assert at_133.model_hit_rate == pytest.approx(0.436, abs=0.01)  # the re-run's number
    assert sim.blocks_for_hit_rate(m, 0.9 * m.curve.max_hit_rate, lo=128, hi=160) == 137


def test_the_saturation_fix_re_run_measures_what_the_model_predicted() -> None:
    """kv_saturation_fixed is the kv_saturation workload re-run at KV_SATURATION's 521 blocks:
    the prediction from the first session beside the re-run's measurement (as Compare shows it)."""
    from dashboard.data import verify

    with open_session(S["kv_saturation"]) as s:
        m = sim.model(s)
    rerun = load_session_memo(S["kv_saturation_fixed"])
    rep_b = report_memo(S["kv_saturation_fixed"])[0]
    settings, p, table = verify.rerun_check(m, rep_b, rerun.requests())
    assert settings.num_blocks == 521 == rep_b["engine"]["num_gpu_blocks"]
    assert p.preemptions == rep_b["preemptions"] == 0
    assert p.peak_kv_usage_frac == pytest.approx(rep_b["kv_cache"]["peak_usage_frac"], abs=0.03)
    assert p.prefix_hit_rate == pytest.approx(rep_b["prefix_cache"]["hit_rate"], abs=0.01)
    rows = table.set_index("")
    assert rows.loc["preemptions"].tolist() == ["0", "0"]
    assert m.times_extrapolated(p)  # batches of 64 where the recorded steps had at most 3
    assert "extrapolated" in verify.times_note(m, p)


def test_the_thrash_fix_re_run_at_the_models_size_keeps_the_prefixes() -> None:
    from dashboard.data import verify

    with open_session(S["prefix_thrash"]) as s:
        m = sim.model(s)
    rep_b, findings_b = report_memo(S["prefix_thrash_fixed"])
    settings, p, _ = verify.rerun_check(m, rep_b, load_session_memo(S["prefix_thrash_fixed"]).requests())
    assert settings.num_blocks == 137
    assert "PREFIX_THRASH" not in {f["code"] for f in findings_b}
    assert p.model_hit_rate == pytest.approx(rep_b["prefix_cache"]["hit_rate"], abs=0.01)  # 87.1 % both
    assert p.peak_kv_usage_frac == pytest.approx(rep_b["kv_cache"]["peak_usage_frac"], abs=0.03)
    assert p.preemptions == rep_b["preemptions"] == 0


def test_hit_rate_card_names_the_tiers_the_headline_counts() -> None:
    """gpu_h200_offload: the headline's 32.5 % counts the CPU tier's hits; the card's 7.5 % is the
    GPU cache alone and says so, with the same 32.5 % beside it."""
    rep, _ = report_memo(S["gpu_h200_offload"])
    card = next(n for n in summary.key_numbers(rep) if n.key == "hit_rate")
    assert card.value == "7.5%" and card.detail == "GPU only; 32.5% with CPU"
    assert "hit rate 32.5%" in rep["headline"]
    plain = next(n for n in summary.key_numbers(report_memo(S["kv_forensics"])[0]) if n.key == "hit_rate")
    assert plain.detail == ""  # no tier behind the GPU: nothing to add


def test_compare_throughput_of_a_scraped_session_is_a_rate_not_one_scrape_per_bucket() -> None:
    """attach_pressure scrapes every 0.25 s: one scrape's tokens in a 31 ms bucket read as 5,460
    tokens/s; the rolling 1 s rate peaks at 380 and still adds up to every generated token."""
    data = load_session_memo(S["attach_pressure"])
    view = View(0.0, data.duration_s, 400)
    b = data.buckets(view)
    gen = compare.aligned_series(b, view, 0.0, "A", 1.0)["generation"]
    assert gen["per_s"].max() < 500
    assert gen["per_s"].sum() * view.width_s == pytest.approx(b["generation_tokens"].sum())


def test_swimlane_prefixes_each_get_their_own_colour() -> None:
    """prefix_thrash has 16 shared prefixes: the theme's palette repeated after 10 (prefix K drew
    as prefix A); each now has its own colour, and requests without one are grey."""
    data = load_session_memo(S["prefix_thrash"])
    with data.open() as s:
        groups = prefix_groups(s.table("prompt_blocks"))
    spans = request_spans(data.requests(), groups, 0.0, data.duration_s)
    scale = cr.prefix_color(spans["prefix"]).to_dict()["scale"]
    shared = [(d, c) for d, c in zip(scale["domain"], scale["range"], strict=True) if d.startswith("prefix ")]
    assert len(shared) == 16 and len({c for _, c in shared}) == 16
    assert scale["domain"][:3] == ["prefix A", "prefix B", "prefix C"]
