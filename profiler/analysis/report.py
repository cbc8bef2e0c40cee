"""``kvscope report``: the session's key numbers as the documented JSON object or a short text.

Every number comes from the session; what the session did not measure is None (``null``).
"""

from __future__ import annotations

from typing import Any

from profiler.analysis import preemption, serving
from profiler.analysis.devices import device_reasons
from profiler.analysis.fixes import flag_changes, flags_line, same_fix_as
from profiler.analysis.headline import headline, parallelism_text
from profiler.analysis.kv_groups import kv_groups
from profiler.analysis.kv_size import kv_cache_size
from profiler.analysis.latency import fill_report_latency, format_latency
from profiler.analysis.occupancy import engine_occupancy
from profiler.analysis.spec_decode import by_prompt_length as spec_by_prompt_length
from profiler.analysis.spec_decode import (
    drafter_weights_bytes,
    mean_accepted_length,
    spec_decode_report,
)
from profiler.analysis.tiers import kv_tiers
from profiler.session import summaries
from profiler.session.reader import Session
from profiler.units import finite_or_none, fmt, fmt_bytes, fmt_gib, json_safe, printable

REPORT_VERSION = 1


_STEP_TOTALS = """
SELECT COUNT(running), SUM(preemptions), SUM(prefix_queries_tokens), SUM(prefix_hits_tokens),
       SUM(preempted_prefix_queries_tokens), SUM(preempted_prefix_hits_tokens),
       MAX(CASE WHEN running IS NOT NULL THEN kv_usage_frac END),
       AVG(CASE WHEN running IS NOT NULL THEN kv_usage_frac END), SUM(finished)
FROM steps
"""
"""One scan of ``steps`` in SQLite: a 1M-step session never has to become a DataFrame here."""


def step_totals(session: Session) -> tuple[Any, ...]:
    """The report's step totals (``summaries.step_totals``' order): from the stored rollups when
    they cover the whole session, else one scan of ``steps``."""
    if session.window is None and summaries.up_to_date(session.db):
        return summaries.step_totals(session.db)
    return session.rows(_STEP_TOTALS)[0]


def build_report(session: Session, findings: list[dict[str, Any]] | None = None,
                 preemptions: preemption.PreemptionSummary | None = None) -> dict[str, Any]:
    """The ``kvscope report --json`` object (see README / issue spec for the key list).

    Strict JSON as it stands (no NaN/±Inf, no bytes). ``notes`` lists what was left out: values
    the reader found impossible for their column (``Session.notes``) and numbers that do not add
    up (more prefix hits than queries). ``preemptions``: the session's ``preemption.summarize``
    when the caller has it already (the stored one of a large session).
    """
    notes = session.notes()
    meta = session.meta()
    engines = session.table("engines")
    requests = session.table("requests")
    start, end = session.bounds()
    eng = engines.iloc[0] if not engines.empty else None
    steps_n, pre, pq, ph, ppq, pph, kv_peak, kv_mean, finished = step_totals(session)
    occ = engine_occupancy(session)
    pre_summary = preemptions if preemptions is not None else preemption.summarize(session, pre)
    notes.extend(pre_summary.notes)
    startup = session.table("startup_memory")
    mem = startup.iloc[0] if not startup.empty else None
    engine = {
        k: (finite_or_none(eng[k]) if eng is not None else None)
        for k in ("block_size", "num_gpu_blocks", "enable_prefix_caching", "max_num_seqs",
                  "max_model_len", "gpu_memory_utilization", "tensor_parallel_size",
                  "pipeline_parallel_size", "data_parallel_size", "source")
    }
    if engine["enable_prefix_caching"] is not None:
        engine["enable_prefix_caching"] = bool(engine["enable_prefix_caching"])
    hit_rate = (ph / pq) if pq and ph is not None else None
    if hit_rate is not None and hit_rate > 1:
        notes.append(f"prefix_cache: {ph} hit tokens exceed {pq} queried tokens; hit rate left out")
        hit_rate = None
    size = kv_cache_size(session)
    processes = session.table("processes")
    workers = int((processes["role"] == "worker").sum()) if not processes.empty else 0
    report = {
        "kvscope_report": REPORT_VERSION,
        "session": {
            "path": str(session.path),
            "vllm_version": meta.get("vllm_version") or (finite_or_none(eng["vllm_version"]) if eng is not None else None),
            "model": meta.get("model") or (finite_or_none(eng["model"]) if eng is not None else None),
            "started_at_unix_s": finite_or_none(start),
            "duration_s": finite_or_none(end - start) if start is not None and end is not None else None,
            "complete": meta.get("ended_unix_s") is not None and not meta.get("incomplete_reason"),
        },
        "engine": engine,
        "engines": int(len(engines)),
        "workers": workers,
        "steps": int(steps_n),
        "preemptions": pre,
        "requests_finished": int(len(requests)) if not requests.empty or finished is None else int(finished),
        "prefix_cache": {
            "queries_tokens": pq,
            "hits_tokens": ph,
            "hit_rate": hit_rate,
            "preempted_queries_tokens": ppq,
            "preempted_hits_tokens": pph,
        },
        "kv_cache": {"peak_usage_frac": kv_peak, "mean_usage_frac": kv_mean,
                     "token_occupancy_mean_frac": occ.mean_frac if occ else None,
                     "token_occupancy_peak_frac": occ.peak_frac if occ else None,
                     "bytes_per_block": size.bytes_per_block, "size_bytes": size.size_bytes,
                     "groups": [g.as_dict() for g in kv_groups(session)]},
        "kv_tiers": kv_tiers(session, {"queries_tokens": pq, "hits_tokens": ph,
                                       "peak_usage_frac": kv_peak}),
        "preemption": pre_summary.as_json(),
        "memory": {
            **{k: (finite_or_none(mem[k]) if mem is not None else None)
               for k in ("weights_bytes", "kv_cache_bytes", "activation_peak_bytes",
                         "non_torch_bytes", "cuda_graph_bytes")},
            "drafter_weights_bytes": drafter_weights_bytes(session),
        },
        "gpus": _gpus(session, notes, findings or []),
        "latency_s": serving.latency(requests),
        "throughput": serving.throughput(requests),
        "cost": serving.cost(session, requests),
        "spec_decode": spec_decode_report(session, notes),
        "events": _event_counts(session),
        "findings": findings or [],
        "notes": notes,
    }
    split = (report["latency_s"].get("by_prompt_length") or {}).get("split_tokens")
    report["spec_decode_by_prompt_length"] = (
        spec_by_prompt_length(session, requests, split) if report["spec_decode"] else None)
    report["latency_s"] = fill_report_latency(report["latency_s"], session)
    report["headline"] = headline(report)
    dropped: list[str] = []
    report = json_safe(report, replaced=dropped)
    if dropped:
        report["notes"].append(f"not finite numbers left out: {', '.join(dropped)}")
    return report


def _gpus(session: Session, notes: list[str], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gpus = session.table("gpus")
    unknown = int(gpus["device_index"].isna().sum())
    if unknown:
        notes.append(f"gpus: {unknown} row{'s' if unknown != 1 else ''} without a device index "
                     "left out")
    gpus = gpus.dropna(subset=["device_index"]).drop_duplicates("device_index")
    own = set(session.table("processes")["pid"].dropna().astype(int))
    shown = device_reasons(gpus, session.table("gpu_samples"), session.table("gpu_process_samples"),
                           session.table("allocator_samples"), own, findings)
    out = []
    for _, g in gpus.iterrows():
        peak = session.scalar(
            "SELECT MAX(used_bytes) FROM gpu_samples WHERE device_index = ?", (int(g["device_index"]),)
        )
        out.append({"index": int(g["device_index"]), "name": finite_or_none(g["name"]),
                    "total_bytes": finite_or_none(g["total_bytes"]), "peak_used_bytes": finite_or_none(peak),
                    "shown": shown.get(int(g["device_index"]))})
    return out


def _event_counts(session: Session) -> dict[str, int]:
    rows = session.rows("SELECT kind, COUNT(*) FROM events WHERE kind IS NOT NULL GROUP BY kind")
    return {k: int(n) for k, n in rows}


def _preemption_text(p: dict[str, Any]) -> str:
    if not p.get("count"):
        return ""
    worst = p.get("worst_request") or {}
    text = (f" ({fmt(p.get('requests'), '{:,}')} requests; {fmt(p.get('recomputed_tokens'), '{:,}')} "
            f"tokens prefilled again ≈ {fmt(p.get('recompute_s_est'), '{:.2f} s')} of prefill")
    if worst:
        text += (f"; worst request {worst.get('request_id')}: {worst.get('preemptions')}×, "
                 f"{fmt(worst.get('recomputed_tokens'), '{:,}')} tokens again")
    return text + ")"


def _p(d: dict[str, Any] | None, name: str) -> str:
    d = d or {}
    return "/".join(fmt(d.get(f"{name}_p{q}"), "{:.3f}") for q in (50, 95, 99))


def _serving_lines(report: dict[str, Any]) -> list[str]:
    """Latency splits, prompt-length buckets, throughput, cost, KV groups, speculative decoding."""
    lat = report.get("latency_s") or {}
    lines = []
    if any(lat.get(f"{k}_p50") is not None for k in ("prefill", "decode_per_token")):
        lines.append(f"          prefill p50/p95/p99 {_p(lat, 'prefill')} s   decode per token "
                     f"p50/p95/p99 {_p(lat, 'decode_per_token')} s")
    split = lat.get("by_prompt_length")
    if split:
        for name in ("short", "long"):
            b = split[name]
            sign = "<" if name == "short" else ">="
            lines.append(f"  {name:<5} prompts {sign} {split['split_tokens']} tokens "
                         f"({b['requests']} requests): TTFT {_p(b, 'ttft')} s, decode/token "
                         f"{_p(b, 'decode_per_token')} s")
    tp = report.get("throughput") or {}
    if tp.get("requests_per_s") is not None:
        lines.append(f"throughput {fmt(tp.get('output_tokens_per_s'), '{:,.1f}')} output tokens/s, "
                     f"{fmt(tp.get('requests_per_s'), '{:,.2f}')} requests/s")
    c = report.get("cost") or {}
    lines.append(f"cost      {fmt(c.get('gpu_seconds'), '{:,.1f}')} GPU-seconds, "
                 f"{fmt(c.get('gpu_hours_per_million_tokens'), '{:,.3f}')} GPU-hours per million "
                 f"tokens ({fmt(c.get('prompt_tokens'), '{:,}')} prompt + "
                 f"{fmt(c.get('generation_tokens'), '{:,}')} generated)"
                 + (f"; {c['basis']}" if c.get("basis") and c.get("gpu_seconds") is None else ""))
    for g in (report.get("kv_cache") or {}).get("groups") or []:
        window = f", window {g['sliding_window_tokens']} tokens" if g.get("sliding_window_tokens") else ""
        lines.append(f"KV group {g['index']} {fmt(g['kind'], '{}')}"
                     f"{' (draft)' if g.get('is_draft') else ''}: {fmt(g['layers'], '{}')} layers, "
                     f"block {fmt(g['block_size'], '{}')} tokens{window}; peak "
                     f"{fmt(g.get('peak_blocks_used'), '{}')} of {fmt(g['num_blocks'], '{}')} blocks "
                     f"({fmt(g.get('peak_usage_frac'), '{:.0%}')})")
    sd = report.get("spec_decode")
    drafter = (report.get("memory") or {}).get("drafter_weights_bytes")
    if sd:
        lines.append(f"spec dec  {fmt(sd['method'], '{}')}: acceptance {fmt(sd['acceptance_rate'], '{:.1%}')} "
                     f"({sd['accepted_tokens']} of {sd['draft_tokens']} draft tokens, "
                     f"{sd['drafts']} drafts), mean accepted length "
                     f"{fmt(mean_accepted_length(sd), '{:.2f}')}, per position "
                     f"{sd['accepted_per_position']}; drafter weights "
                     + ("none (no draft model)" if drafter == 0 else fmt_gib(drafter)))
    by_len = report.get("spec_decode_by_prompt_length")
    for name in ("short", "long") if by_len else ():
        b = by_len[name]
        lines.append(f"  {name:<5} prompts: acceptance {fmt(b['acceptance_rate'], '{:.1%}')}, mean "
                     f"accepted length {fmt(b['mean_accepted_length'], '{:.2f}')} ({b['steps']} steps)")
    return lines


def _kv_line(report: dict[str, Any]) -> str:
    e, kv, mem = report["engine"], report["kv_cache"], report["memory"]
    if e["num_gpu_blocks"] is None:
        short = mem.get("kv_cache_bytes")
        if report["engines"] == 0 and short is not None and short < 0:
            return f"none: start-up was {fmt_bytes(-short)} short of any KV cache memory"
        if report["engines"] == 0:
            return ("n/a (the engine never finished start-up)" if "oom" in report["events"]
                    or "error" in report["events"] else "n/a (no vLLM engine in this session)")
        return "n/a (not reported by this source)"
    text = f"{e['num_gpu_blocks']:,} blocks"
    if e["block_size"] is not None:
        text += f" x {e['block_size']} tokens = {e['num_gpu_blocks'] * e['block_size']:,} tokens"
    if kv.get("size_bytes") is not None:
        per = " per worker" if (report.get("workers") or 0) > 1 else ""
        text += f", {fmt_gib(kv['size_bytes'])}{per} ({fmt_bytes(kv['bytes_per_block'])} per block)"
    if kv["peak_usage_frac"] is not None:
        text += f"   peak {fmt(kv['peak_usage_frac'], '{:.0%}')}  mean {fmt(kv['mean_usage_frac'], '{:.0%}')}"
    return text


def _startup_line(report: dict[str, Any]) -> str | None:
    m, kv = report["memory"], report["kv_cache"]
    parts = [f"{name} {fmt_gib(m[key])}" for key, name in (
        ("weights_bytes", "weights"), ("activation_peak_bytes", "activation peak"),
        ("non_torch_bytes", "non-torch"), ("cuda_graph_bytes", "CUDA graphs")) if m[key] is not None]
    room = m["kv_cache_bytes"]
    if room is not None and room < 0:
        parts.append(f"no room for a KV cache ({fmt_gib(-room)} short)")
    elif room is not None:
        text = f"room measured for KV {fmt_gib(room)}"
        per = kv.get("bytes_per_block")
        blocks = report["engine"]["num_gpu_blocks"]
        if per and blocks is not None and room // per > blocks * 1.02:
            text += f" ({int(room // per):,} blocks; the cache was capped at {blocks:,})"
        parts.append(text)
    return ", ".join(parts) if parts else None


def format_text(report: dict[str, Any]) -> str:
    """Human summary of a report dict (never "None": what was not measured reads n/a with why)."""
    s, e, pc = report["session"], report["engine"], report["prefix_cache"]
    na = "n/a"
    lines = [f"summary   {report.get('headline') or na}",
             f"session   {s['path']}  ({'complete' if s['complete'] else 'INCOMPLETE: recording was cut off'})"]
    if report["engines"] or s["vllm_version"] or s["model"]:
        parallel = parallelism_text(e, report.get("workers")) if report["engines"] else "no engine started"
        lines.append(f"vLLM      {s['vllm_version'] or na}   model {s['model'] or na}   {parallel}")
    else:
        lines.append("vLLM      n/a (no vLLM engine in this session)")
    lines += [
        f"duration  {fmt(s['duration_s'], '{:.1f} s')}   steps {report['steps']:,}   "
        f"requests finished {report['requests_finished']:,}",
        f"KV cache  {_kv_line(report)}",
        "preempt   " + (f"{int(report['preemptions']):,}"
                        + _preemption_text(report.get("preemption") or {})
                        if report["preemptions"] is not None else "n/a (no engine steps)"),
        "prefix    " + (f"hit rate {fmt(pc['hit_rate'], '{:.1%}')} ({pc['hits_tokens']:,} of "
                        f"{pc['queries_tokens']:,} tokens)" if pc["queries_tokens"] is not None
                        and pc["hits_tokens"] is not None else "n/a (no prefix-cache queries recorded)"),
    ]
    kv = report["kv_cache"]
    if kv.get("token_occupancy_mean_frac") is not None:
        lines.append(f"tokens    KV slots holding tokens: mean "
                     f"{fmt(kv['token_occupancy_mean_frac'], '{:.0%}')}  peak "
                     f"{fmt(kv['token_occupancy_peak_frac'], '{:.0%}')} (block usage above)")
    for t in report.get("kv_tiers", [])[1:]:
        lines.append(f"tier {t['medium']:<5}hit rate {fmt(t['hit_rate'], '{:.1%}')} "
                     f"({fmt(t['hits_tokens'], '{:,}')} of {fmt(t['queries_tokens'], '{:,}')} "
                     f"tokens)  stored {fmt_gib(t['stored_bytes'])}  loaded "
                     f"{fmt_gib(t['loaded_bytes'])}  peak usage {fmt(t['peak_usage_frac'], '{:.0%}')}")
    startup = _startup_line(report)
    if startup:
        lines.append(f"start-up  {startup}")
    hidden = 0
    for g in report["gpus"]:
        if g.get("shown") is None:
            hidden += 1
            continue
        lines.append(f"GPU {g['index']}     {g['name'] or na}: peak {fmt_gib(g['peak_used_bytes'])} of "
                     f"{fmt_gib(g['total_bytes'])}")
    if hidden:
        lines.append(f"          ({hidden} other GPU{'s' if hidden != 1 else ''} on the host: idle, "
                     "not used by this session)")
    lat = report["latency_s"]
    if all(v is None for v in lat.values()):
        lines.append("latency   n/a (no finished requests)")
    else:
        lines.append(f"latency   {format_latency(lat)}")
    lines.extend(_serving_lines(report))
    if report["events"]:
        lines.append("events    " + ", ".join(f"{k} {n}" for k, n in sorted(report["events"].items())))
    findings = report["findings"]
    repeats = same_fix_as(findings)
    for i, f in enumerate(findings):
        lines.append(f"[{f['severity'].upper()}] {f['code']}: {f['message']}")
        if i in repeats:
            lines.append(f"    -> same fix as {repeats[i]} above")
        elif f.get("recommendation"):
            lines.append(f"    -> {f['recommendation']}")
            flags = flags_line(flag_changes(f.get("settings") or {}, e))
            if flags:
                lines.append(f"       vllm serve flags: {flags}")
    for note in report.get("notes", []):
        lines.append(f"ignored   {note}")
    # session text (model, GPU names, finding messages) may hold terminal escape sequences
    return "\n".join(printable(line) for line in lines)
