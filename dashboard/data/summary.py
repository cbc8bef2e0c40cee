"""A session's key numbers as shown text, from its report: one list for the Sessions page, the
Overview cards and the picker, so a number reads the same wherever it appears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from profiler.analysis.headline import SEVERITY_ORDER, parallelism_text, worst_finding
from profiler.units import fmt_bytes, fmt_gib, fmt_pct, fmt_s, is_number


@dataclass(frozen=True)
class KeyNumber:
    """One key number: ``key`` (stable id), ``label``, shown ``value`` (short, for a card), ``detail``
    (what a card shows under it), ``help`` (where it comes from)."""

    key: str
    label: str
    value: str
    help: str = ""
    detail: str = ""
    full: str = ""
    """The value in full where the card shortens it (``text`` and ``card_detail`` use it)."""

    @property
    def text(self) -> str:
        """Value and detail on one line ("TP=2, 2 workers", "600 blocks, 1.17 GiB")."""
        value = self.full or self.value
        return f"{value}, {self.detail}" if self.detail else value

    @property
    def card_detail(self) -> str:
        """What a card shows under its value: the full value (where shortened) and the detail."""
        return " · ".join(x for x in (self.full, self.detail) if x)


def engine_gpus(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's GPUs that matter to the session (``shown``), all when none is marked."""
    gpus = report.get("gpus") or []
    shown = [g for g in gpus if g.get("shown")]
    return shown if shown else gpus if all("shown" not in g for g in gpus) else []


def key_numbers(report: dict[str, Any]) -> list[KeyNumber]:
    """The session's measured key numbers, in display order (what was not measured is left out;
    ``not_measured`` names it)."""
    s, e, kv, pc, lat = (report["session"], report["engine"], report["kv_cache"], report["prefix_cache"],
                         report["latency_s"])
    out = [KeyNumber("duration", "Duration", fmt_s(s.get("duration_s")),
                     "from the session start (engine start-up included) to its last sample")]
    text = parallelism_text(e, report.get("workers"))
    if report.get("engines") and text != "n/a":
        head, _, tail = text.rpartition(", ") if "worker" in text else (text, "", "")
        out.append(KeyNumber("parallel", "Parallelism", head or text,
                             "tensor / pipeline / data parallel sizes and the worker processes recorded",
                             tail))
    if report.get("steps"):
        out.append(KeyNumber("steps", "Engine steps", f"{report['steps']:,}"))
    if report.get("engines") or report.get("requests_finished"):
        out.append(KeyNumber("requests", "Requests finished", f"{report['requests_finished']:,}"))
    if report.get("preemptions") is not None:
        out.append(KeyNumber("preemptions", "Preemptions", f"{int(report['preemptions']):,}",
                             "requests preempted, summed over the engine steps"))
    if e.get("num_gpu_blocks") is not None:
        size = fmt_bytes(kv["size_bytes"]) if kv.get("size_bytes") is not None else ""
        per = " per worker" if size and (report.get("workers") or 0) > 1 else ""
        n = int(e["num_gpu_blocks"])
        # a card fits about nine characters: 55,521 blocks shows as "55.5k", "55,521 blocks" beneath
        short = f"{n:,} blocks" if n < 1_000 else f"{n / 1000:.1f}k"
        out.append(KeyNumber("kv_size", "KV cache", short,
                             "what the cache held: blocks × bytes per block"
                             + (f" ({fmt_bytes(kv['bytes_per_block'])} per block, "
                                f"{int(e['block_size'] or 0)} tokens each)" if kv.get("bytes_per_block") else
                                "; bytes per block not recorded by this session"),
                             size + per, f"{n:,} blocks" if n >= 1_000 else ""))
    if kv.get("peak_usage_frac") is not None:
        out.append(KeyNumber("kv_peak", "Peak KV usage", fmt_pct(kv["peak_usage_frac"])))
        out.append(KeyNumber("kv_mean", "Mean KV usage", fmt_pct(kv["mean_usage_frac"])))
    if pc.get("hit_rate") is not None:
        behind = [t for t in report.get("kv_tiers") or [] if t.get("medium") != "GPU"
                  and is_number(t.get("hits_tokens"))]
        helptext = f"{pc['hits_tokens']:,} of {pc['queries_tokens']:,} queried prompt tokens hit the GPU prefix cache"
        tiered = ""
        if behind and pc.get("queries_tokens"):
            more = sum(int(t["hits_tokens"]) for t in behind)
            names = " + ".join(str(t["medium"]) for t in behind)
            total = fmt_pct((pc["hits_tokens"] + more) / pc["queries_tokens"])
            tiered = f"GPU only; {total} with {names}"
            helptext += f"; the {names} tier behind it hit {more:,} more: {total} in all"
        out.append(KeyNumber("hit_rate", "Prefix hit rate", fmt_pct(pc["hit_rate"]), helptext, tiered))
    if lat.get("ttft_p95") is not None:
        out.append(KeyNumber("ttft_p95", "TTFT p95", fmt_s(lat["ttft_p95"])))
    if lat.get("e2e_p95") is not None:
        out.append(KeyNumber("e2e_p95", "End-to-end p95", fmt_s(lat["e2e_p95"])))
    if lat.get("prefill_p95") is not None:
        out.append(KeyNumber("prefill_p95", "Prefill p95", fmt_s(lat["prefill_p95"]),
                             "vLLM's scheduled → first token time per request (queueing excluded)"))
    if lat.get("decode_per_token_p95") is not None:
        out.append(KeyNumber("itl_p95", "Decode per token p95", fmt_s(lat["decode_per_token_p95"]),
                             "inter-token latency: each request's decode time over its tokens after "
                             "the first"))
    tput = (report.get("throughput") or {}).get("output_tokens_per_s")
    if tput is not None:
        out.append(KeyNumber("throughput", "Output tokens / s", f"{tput:,.0f}",
                             "generated tokens of the finished requests, first arrival to last finish"))
    cost = report.get("cost") or {}
    if cost.get("gpu_hours_per_million_tokens") is not None:
        out.append(KeyNumber("cost", "GPU-h / M tokens", f"{cost['gpu_hours_per_million_tokens']:,.4f}",
                             f"{cost['basis']}; {cost['prompt_tokens'] or 0:,} prompt + "
                             f"{cost['generation_tokens'] or 0:,} generated tokens",
                             f"{cost['gpu_seconds']:,.0f} GPU-s"))
    gpus = [g for g in engine_gpus(report) if g.get("peak_used_bytes") is not None]
    if gpus:
        g = max(gpus, key=lambda x: x["peak_used_bytes"])
        frac = g["peak_used_bytes"] / g["total_bytes"] if is_number(g.get("total_bytes")) and g["total_bytes"] else None
        out.append(KeyNumber("gpu_peak", "Peak GPU memory", fmt_gib(g["peak_used_bytes"]),
                             f"NVML used memory of GPU {g['index']}, the fullest of the session's GPUs",
                             f"of {fmt_gib(g['total_bytes'])} ({fmt_pct(frac)})"))
    return out


def not_measured(report: dict[str, Any]) -> list[str]:
    """What the key numbers leave out, each with why (one short phrase)."""
    out = []
    if not report.get("engines"):
        out.append("engine settings, KV cache and latency (no vLLM engine ran)")
        return out + ([] if report.get("gpus") else ["GPU memory (no NVML)"])
    if parallelism_text(report["engine"], report.get("workers")) == "n/a":
        out.append("parallelism (an attached server's /metrics does not expose it)"
                   if report["engine"].get("source") == "scrape" else "parallelism (not recorded)")
    if not report.get("steps"):
        out.append("KV usage, preemptions and throughput (no engine step completed)")
    elif report["prefix_cache"].get("hit_rate") is None:
        out.append("prefix hit rate (no prefix-cache queries)")
    if report["latency_s"].get("ttft_p95") is None and report["latency_s"].get("e2e_p95") is None:
        out.append("latency (no finished requests)")
    if not report.get("gpus"):
        out.append("GPU memory (no NVML on this machine)")
    cost = report.get("cost") or {}
    if cost.get("gpu_hours_per_million_tokens") is None and cost.get("gpu_seconds") is not None:
        out.append("GPU cost per token (no tokens processed)")
    elif cost.get("gpu_hours_per_million_tokens") is None and cost.get("basis"):
        out.append(f"GPU cost per token ({cost['basis']})")
    return out


def worst_text(report: dict[str, Any]) -> str:
    """``CRITICAL KV_SATURATION`` for the worst finding, or "none"."""
    w = worst_finding(report.get("findings") or [])
    return f"{str(w['severity']).upper()} {w['code']}" if w else "none"


def severity_rank(report: dict[str, Any]) -> int:
    """0 critical, 1 warning, 2 info, 3 no findings (for sorting)."""
    w = worst_finding(report.get("findings") or [])
    return SEVERITY_ORDER.get(str(w["severity"]), 3) if w else 3
