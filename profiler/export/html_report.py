"""A single-file HTML report of a session: key numbers, findings, main charts; opens offline.

Everything is in the one file: the numbers and findings of ``kvscope report`` (the same
``build_report`` object, so every value equals the JSON's), the engine settings, and Vega-Lite
charts (KV cache usage, running/waiting requests, token throughput, GPU memory, request latency)
drawn by the Vega/Vega-Lite/vega-embed bundle that ``vl-convert-python`` ships, inlined: no CDN,
no server, no network. Session text (model, messages, findings) is HTML-escaped; chart data is
JSON inside ``<script>`` with ``</`` escaped.
"""

from __future__ import annotations

import functools
import html
import json
import time
from pathlib import Path
from typing import Any

from profiler import __version__
from profiler.analysis.summarized import report_and_findings
from profiler.session.reader import Session
from profiler.units import (
    NOT_MEASURED,
    finite_or_none,
    fmt_gib,
    fmt_pct,
    fmt_s,
    json_safe,
    printable,
)

CHART_BUCKETS = 600
"""Time buckets per chart (min/max kept for levels, sums for counts)."""

VEGA_LITE_VERSION = "6.4"
"""The Vega-Lite version of the inlined bundle (the specs below are written for it)."""


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """The Vega + Vega-Lite + vega-embed JavaScript bundle (``vl_convert``: no network)."""
    import vl_convert

    return str(vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION))


def export_html(session: Session, out: Path) -> dict[str, Any]:
    """Write the report of ``session`` to ``out``; returns the report object it shows."""
    report, _ = report_and_findings(session)  # stored with a large session's summaries
    out.write_text(render(session, report), encoding="utf-8")
    return report


def _e(value: Any) -> str:
    """Session text as HTML text (control characters dropped)."""
    return html.escape(printable(value), quote=True)


def _num(value: Any, pattern: str = "{:,}") -> str:
    value = finite_or_none(value)
    return NOT_MEASURED if value is None else pattern.format(value)


def key_numbers(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, shown value) of the report's key numbers, formatted as the dashboard shows them."""
    s, kv, pc, lat = report["session"], report["kv_cache"], report["prefix_cache"], report["latency_s"]
    gpu = max(report["gpus"], key=lambda g: g["peak_used_bytes"] or 0) if report["gpus"] else None
    return [
        ("Duration", fmt_s(s["duration_s"])),
        ("Engine steps", _num(report["steps"])),
        ("Requests finished", _num(report["requests_finished"])),
        ("Peak KV usage", fmt_pct(kv["peak_usage_frac"])),
        ("Mean KV usage", fmt_pct(kv["mean_usage_frac"])),
        ("Preemptions", _num(report["preemptions"])),
        ("Prefix hit rate", fmt_pct(pc["hit_rate"])),
        ("Peak GPU memory", fmt_gib(gpu["peak_used_bytes"]) if gpu else NOT_MEASURED),
        ("TTFT p50 / p95", f"{fmt_s(lat['ttft_p50'])} / {fmt_s(lat['ttft_p95'])}"),
        ("End-to-end p50 / p95", f"{fmt_s(lat['e2e_p50'])} / {fmt_s(lat['e2e_p95'])}"),
    ]


def step_buckets(session: Session, start_unix_s: float, t0_s: float, t1_s: float,
                 n: int = CHART_BUCKETS) -> list[dict[str, Any]]:
    """Steps per engine in ``n`` time buckets of ``t0_s..t1_s`` (seconds since ``start_unix_s``):
    min/max of the levels, sums of the counts."""
    width = max(t1_s - t0_s, 1e-6) / n
    rows = session.rows(
        "SELECT engine_id, MIN(CAST((t_unix_s - ?) / ? AS INTEGER), ?) AS b, COUNT(*), "
        "MIN(kv_usage_frac), MAX(kv_usage_frac), MIN(running), MAX(running), MIN(waiting), "
        "MAX(waiting), SUM(prompt_tokens), SUM(generation_tokens), SUM(preemptions) FROM steps "
        "WHERE t_unix_s >= ? GROUP BY engine_id, b ORDER BY engine_id, b",
        (start_unix_s + t0_s, width, n - 1, start_unix_s + t0_s))
    out = []
    for eid, b, steps, kv0, kv1, r0, r1, w0, w1, prompt, gen, pre in rows:
        out.append({"engine": f"engine {eid}", "t_s": t0_s + b * width, "steps": steps,
                    "kv_min": kv0, "kv_max": kv1, "running_min": r0, "running_max": r1,
                    "waiting_min": w0, "waiting_max": w1,
                    "prompt_per_s": None if prompt is None else prompt / width,
                    "generation_per_s": None if gen is None else gen / width,
                    "preemptions": pre})
    return out


def serving_range(session: Session, start_unix_s: float, duration_s: float) -> tuple[float, float]:
    """From shortly before the first engine step to the end (the dashboard's default zoom)."""
    first = session.scalar("SELECT MIN(t_unix_s) FROM steps")
    if first is None:
        return 0.0, duration_s
    first_s = max(first - start_unix_s, 0.0)
    pad = max((duration_s - first_s) * 0.02, 0.05)
    return max(first_s - pad, 0.0), duration_s


def _time_x(domain: tuple[float, float]) -> dict[str, Any]:
    """The time axis (seconds since session start) over ``domain``."""
    return {"field": "t_s", "type": "quantitative", "title": "time since session start (s)",
            "scale": {"domain": list(domain), "nice": False}}


def _engines(data: list[dict[str, Any]]) -> bool:
    return len({r["engine"] for r in data}) > 1


def _band_chart(data: list[dict[str, Any]], domain: tuple[float, float], lo: str, hi: str,
                title: str, y_title: str, fmt: str | None = None,
                y_domain: list[float] | None = None) -> dict[str, Any]:
    """Min-max band and max line of a level per bucket (one color per engine when several)."""
    y_axis: dict[str, Any] = {"title": y_title}
    if fmt:
        y_axis["format"] = fmt
    y: dict[str, Any] = {"field": hi, "type": "quantitative", "axis": y_axis}
    if y_domain:
        y["scale"] = {"domain": y_domain}
    rows = [r for r in data if r[lo] is not None and r[hi] is not None]
    color = ({"field": "engine", "type": "nominal"} if _engines(rows)
             else {"value": "#4c78a8"})
    return {
        "title": title, "height": 170, "width": "container", "data": {"values": rows},
        "layer": [
            {"mark": {"type": "area", "opacity": 0.3, "interpolate": "step-after"},
             "encoding": {"x": _time_x(domain), "y": y, "y2": {"field": lo}, "color": color}},
            {"mark": {"type": "line", "strokeWidth": 1, "interpolate": "step-after"},
             "encoding": {"x": _time_x(domain), "y": y, "color": color,
                          "tooltip": [{"field": "t_s", "format": ".2f"},
                                      {"field": hi, "format": fmt or ",.0f", "title": "max"},
                                      {"field": lo, "format": fmt or ",.0f", "title": "min"}]}},
        ],
    }


def _fold_chart(data: list[dict[str, Any]], domain: tuple[float, float],
                fields: dict[str, str], title: str, y_title: str) -> dict[str, Any]:
    """One line per (series, engine), each series a field of the rows."""
    rows = [{"t_s": r["t_s"], "engine": r["engine"], "series": name, "value": r[f]}
            for r in data for f, name in fields.items() if r[f] is not None]
    encoding: dict[str, Any] = {
        "x": _time_x(domain), "y": {"field": "value", "type": "quantitative", "title": y_title},
        "color": {"field": "series", "type": "nominal"},
        "tooltip": [{"field": "t_s", "format": ".2f"}, {"field": "series"}, {"field": "engine"},
                    {"field": "value", "format": ",.1f"}]}
    if _engines(rows):
        encoding["strokeDash"] = {"field": "engine", "type": "nominal"}
    return {"title": title, "height": 170, "width": "container", "data": {"values": rows},
            "mark": {"type": "line", "strokeWidth": 1, "interpolate": "step-after"},
            "encoding": encoding}


def gpu_chart(session: Session, start_unix_s: float, end_unix_s: float,
              n: int = CHART_BUCKETS) -> dict[str, Any] | None:
    """Peak NVML used memory per device per bucket (None when NVML was not sampled)."""
    width = max(end_unix_s - start_unix_s, 1e-6) / n
    rows = session.rows(
        "SELECT device_index, MIN(CAST((t_unix_s - ?) / ? AS INTEGER), ?) AS b, MAX(used_bytes), "
        "MAX(total_bytes) FROM gpu_samples WHERE used_bytes IS NOT NULL AND t_unix_s >= ? "
        "GROUP BY device_index, b ORDER BY device_index, b",
        (start_unix_s, width, n - 1, start_unix_s))
    if not rows:
        return None
    values = [{"t_s": (b + 0.5) * width, "device": f"GPU {dev}", "used_gib": used / 2**30}
              for dev, b, used, _ in rows]
    return {
        "title": "GPU memory used (NVML, peak per bucket)", "height": 170, "width": "container",
        "data": {"values": values}, "mark": {"type": "line", "strokeWidth": 1},
        "encoding": {"x": _time_x((0.0, end_unix_s - start_unix_s)),
                     "y": {"field": "used_gib", "type": "quantitative", "title": "GiB"},
                     "color": {"field": "device", "type": "nominal"},
                     "tooltip": [{"field": "t_s", "format": ".2f"}, {"field": "device"},
                                 {"field": "used_gib", "format": ",.2f"}]},
    }


def latency_chart(session: Session) -> dict[str, Any] | None:
    """Distribution of TTFT and end-to-end latency of the finished requests."""
    rows = session.rows("SELECT ttft_s, e2e_s FROM requests")
    values = [{"latency": name, "seconds": v} for ttft, e2e in rows
              for name, v in (("TTFT", ttft), ("end-to-end", e2e)) if v is not None]
    if not values:
        return None
    return {
        "title": f"Request latency ({len(rows):,} finished requests)", "height": 170,
        "width": "container", "data": {"values": values},
        "mark": {"type": "bar", "opacity": 0.7},
        "encoding": {"x": {"field": "seconds", "type": "quantitative", "bin": {"maxbins": 60},
                           "title": "seconds"},
                     "y": {"aggregate": "count", "type": "quantitative", "title": "requests",
                           "stack": None},
                     "color": {"field": "latency", "type": "nominal"}},
    }


def charts(session: Session, report: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(title, Vega-Lite spec or None, why none) of the report's charts."""
    start = report["session"]["started_at_unix_s"]
    duration = report["session"]["duration_s"]
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    if start is None or duration is None:
        return [("Timeline", None, "the session has no recorded times")]
    duration = max(duration, 1e-3)
    end = start + duration
    serving = serving_range(session, start, duration)
    buckets = step_buckets(session, start, *serving)
    none = "no engine steps were recorded in this session"
    out.append(("KV cache usage", _band_chart(buckets, serving, "kv_min", "kv_max",
                                               "KV cache usage", "KV usage", ".0%", [0, 1.05])
                if buckets else None, none))
    out.append(("Requests", _fold_chart(buckets, serving, {"running_max": "running (max)",
                                                            "waiting_max": "waiting (max)"},
                                        "Running and waiting requests", "requests")
                if buckets else None, none))
    out.append(("Throughput", _fold_chart(buckets, serving, {"prompt_per_s": "prompt",
                                                              "generation_per_s": "generation"},
                                          "Token throughput", "tokens / s")
                if buckets else None, none))
    out.append(("GPU memory", gpu_chart(session, start, end),
                "GPU memory was not measured in this session (no NVML)"))
    out.append(("Latency", latency_chart(session), "no finished requests were recorded"))
    return out


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.muted{color:#666}.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:10px;margin:14px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:8px 10px}.card b{display:block;font-size:19px}
.card span{color:#555;font-size:12px}.finding{border:1px solid #ddd;border-left:5px solid #999;
border-radius:6px;padding:8px 12px;margin:8px 0}.critical{border-left-color:#d62728}
.warning{border-left-color:#f58518}.info{border-left-color:#4c78a8}.rec{color:#1f4e99}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}.chart,.chart.vega-embed{display:block;width:100%;margin:10px 0 18px;min-height:200px}.none{color:#666;font-style:italic}
"""


def render(session: Session, report: dict[str, Any]) -> str:
    """The whole HTML document."""
    s = report["session"]
    status = "complete" if s["complete"] else "INCOMPLETE: the recording was cut off"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>kvscope report · {_e(session.path.stem)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style>",
        f"<script>{vega_bundle()}</script></head><body>",
        f"<h1>kvscope report · {_e(session.path.stem)}</h1>",
        f"<div class='muted'>{_e(s['path'])} · {_e(status)} · vLLM {_e(s['vllm_version'] or NOT_MEASURED)}"
        f" · model {_e(s['model'] or NOT_MEASURED)} · started "
        f"{_e(_when(s['started_at_unix_s']))} · written by kvscope {_e(__version__)}</div>",
        f"<p><b>{_e(report['headline'])}</b></p>" if report.get("headline") else "",
        "<div class='cards'>",
    ]
    for label, value in key_numbers(report):
        parts.append(f"<div class='card'><span>{_e(label)}</span><b>{_e(value)}</b></div>")
    parts.append("</div><h2>Findings</h2>")
    if not report["findings"]:
        parts.append("<p>No findings: the diagnosis rules found nothing to flag in this session.</p>")
    for f in report["findings"]:
        rng = ""
        if f.get("t_start_s") is not None:
            end = f.get("t_end_s") if f.get("t_end_s") is not None else f["t_start_s"]
            rng = f" · {f['t_start_s']:.2f}–{end:.2f} s"
        sev = str(f.get("severity"))
        parts.append(f"<div class='finding {_e(sev) if sev in ('critical', 'warning', 'info') else ''}'>"
                     f"<b>{_e(f['code'])}</b> · {_e(sev)}{_e(rng)}<div>{_e(f['message'])}</div>")
        if f.get("recommendation"):
            parts.append(f"<div class='rec'>→ {_e(f['recommendation'])}</div>")
        parts.append("</div>")
    parts.append("<h2>Charts</h2>")
    scripts = []
    for i, (title, spec, why) in enumerate(charts(session, report)):
        if spec is None:
            parts.append(f"<p class='none'>{_e(title)}: {_e(why)}.</p>")
            continue
        spec = {"$schema": "https://vega.github.io/schema/vega-lite/v6.json", **spec,
                "autosize": {"type": "fit-x", "contains": "padding"}}
        parts.append(f"<div class='chart' id='chart{i}' data-title='{_e(title)}'></div>")
        scripts.append(f"vegaEmbed('#chart{i}', {_script_json(json_safe(spec))}, "
                       "{actions: false, renderer: 'svg'}).catch(function (e) {"
                       f"document.getElementById('chart{i}').textContent = 'chart failed: ' + e;}});")
    parts.append("<h2>Engine</h2>")
    parts.append(_table([(k, v) for k, v in report["engine"].items()]))
    if report["gpus"]:
        parts.append("<h2>GPUs</h2>")
        parts.append(_table([(f"GPU {g['index']}", f"{g['name'] or NOT_MEASURED}: peak "
                              f"{fmt_gib(g['peak_used_bytes'])} of {fmt_gib(g['total_bytes'])}")
                             for g in report["gpus"]]))
    if report["events"]:
        parts.append("<h2>Events</h2>")
        parts.append(_table(sorted(report["events"].items())))
    if report["notes"]:
        parts.append("<h2>Notes (values the reader ignored)</h2><ul>")
        parts += [f"<li>{_e(n)}</li>" for n in report["notes"]]
        parts.append("</ul>")
    parts.append(f"<script>{''.join(scripts)}</script></body></html>")
    return "\n".join(parts)


def _table(rows: list[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(NOT_MEASURED if v is None else v)}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _when(t_unix_s: float | None) -> str:
    if t_unix_s is None:
        return NOT_MEASURED
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_unix_s))


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
