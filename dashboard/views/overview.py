"""Overview page: what was recorded, the key numbers, and the diagnosis findings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import sections, state
from dashboard.charts import panels as charts
from dashboard.data.steps import View
from profiler import units
from profiler.units import escape_markdown

SEVERITY_ICON = {"critical": ":material/error:", "warning": ":material/warning:",
                 "info": ":material/info:"}

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        eng = data.engine()
        st.title(f"Overview · {escape_markdown(data.name)}")
        status = "complete" if data.complete else "INCOMPLETE: the recording was cut off"
        st.caption(f"{escape_markdown(data.path)} · {status}")
        cards = st.container()
        t0, t1 = data.serving_range()
        view = View(t0, t1, 500)
        b = state.buckets(data, view)
        left, right = st.columns(2)
        with left:
            state.show(charts.kv_usage_chart(b, view, data.num_blocks(), height=160), key="ov-kv")
        with right:
            state.show(charts.queue_chart(b, view, height=160), key="ov-queue")

        rep, findings = state.report(data)
        with cards:
            s, kv, pc, lat = rep["session"], rep["kv_cache"], rep["prefix_cache"], rep["latency_s"]
            c = st.columns(5)
            c[0].metric("Duration", units.fmt_s(s["duration_s"]))
            c[1].metric("Engine steps", f"{rep['steps']:,}")
            c[2].metric("Requests finished", f"{rep['requests_finished']:,}")
            c[3].metric("Peak KV usage", units.fmt_pct(kv["peak_usage_frac"]))
            c[4].metric("Mean KV usage", units.fmt_pct(kv["mean_usage_frac"]))
            c = st.columns(5)
            c[0].metric("Preemptions", "n/a" if rep["preemptions"] is None else f"{int(rep['preemptions']):,}")
            c[1].metric("Prefix hit rate", units.fmt_pct(pc["hit_rate"]),
                        help=f"{pc['hits_tokens']} of {pc['queries_tokens']} queried prompt tokens hit")
            if rep["gpus"]:
                g = max(rep["gpus"], key=lambda x: x["peak_used_bytes"] or 0)
                frac = (g["peak_used_bytes"] / g["total_bytes"]) if g["peak_used_bytes"] and g["total_bytes"] else None
                c[2].metric("Peak GPU memory", units.fmt_gib(g["peak_used_bytes"]),
                            delta=f"of {units.fmt_gib(g['total_bytes'])} ({units.fmt_pct(frac)})",
                            delta_color="off")
            else:
                c[2].metric("Peak GPU memory", "—", help="not measured on this machine (no NVML)")
            c[3].metric("TTFT p95", units.fmt_s(lat["ttft_p95"]))
            c[4].metric("End-to-end p95", units.fmt_s(lat["e2e_p95"]))
            c = st.columns(5)
            c[0].metric("Prefill p95", units.fmt_s(lat["prefill_p95"]))
            c[1].metric("Decode per token p95", units.fmt_s(lat["decode_per_token_p95"]))
            c[2].metric("Output tokens / s", units.fmt(rep["throughput"]["output_tokens_per_s"], "{:,.0f}"))
            sections.cost_metric(c[3], rep)
        sections.spec_decode_summary(rep)

        st.subheader("Findings")
        if not findings:
            st.success("No findings: the diagnosis rules found nothing to flag in this session.",
                       icon=":material/check_circle:")
        for i, f in enumerate(findings):
            with st.container(border=True):
                cols = st.columns([5, 1.6])
                rng = ""
                if f.get("t_start_s") is not None:
                    rng = f" · {f['t_start_s']:.2f}–{(f.get('t_end_s') or f['t_start_s']):.2f} s"
                # finding text quotes the session (OOM stage, event messages): text, not markup
                cols[0].markdown(f"**{escape_markdown(f['code'])}** · "
                                 f"{escape_markdown(f['severity'])}{rng}")
                cols[0].markdown(escape_markdown(f["message"]))
                if f.get("recommendation"):
                    cols[0].markdown(f":blue[→ {escape_markdown(f['recommendation'])}]")
                icon = SEVERITY_ICON.get(str(f["severity"]), ":material/info:")
                if f.get("t_start_s") is not None and cols[1].button(
                        "Open in Timeline", key=f"finding-{i}", icon=icon):
                    a = float(f["t_start_s"])
                    z = float(f.get("t_end_s") or a)
                    pad = max((z - a) * 0.15, 0.2)
                    state.set_zoom(data, a - pad, z + pad)
                    st.switch_page("views/timeline.py")

        st.subheader("Engine and machine")
        meta = data.meta
        left, right = st.columns(2)
        info = {
            "model": rep["session"]["model"], "vLLM": rep["session"]["vllm_version"],
            "kvscope": meta.get("kvscope_version"), "host": meta.get("host"),
            "device": eng.get("device"), "engines": rep["engines"],
            "command": " ".join(meta.get("command") or []),
        }
        # Small key-value tables: static HTML (st.table), not the interactive grid, so the page stays light.
        left.table(pd.DataFrame({"field": list(info), "value": [
            units.NOT_MEASURED if v is None or v == "" else str(v) for v in info.values()]}),
                   hide_index=True)
        config_cols = ["engine_id", "block_size", "num_gpu_blocks", "gpu_memory_utilization",
                       "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens", "max_model_len",
                       "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                       "kv_cache_dtype"]
        if data.engines.empty:
            right.info("No vLLM engine was created in this session: no engine settings.")
        else:
            cfg = data.engines[[c for c in config_cols if c in data.engines]].T.reset_index()
            cfg.columns = ["setting"] + [f"engine {int(e)}" for e in data.engines["engine_id"]]
            right.table(cfg.map(lambda v: units.NOT_MEASURED if pd.isna(v) else str(v)),
                        hide_index=True)
            state.csv_download(data.engines, f"{data.name}-engines", "Engine config CSV")
        if data.gpus.empty:
            st.caption("GPUs: not measured on this machine (no NVML).")
        else:
            gpus = data.gpus.assign(total_gib=data.gpus["total_bytes"] / 2**30)
            st.table(gpus[["device_index", "name"]].assign(total=gpus["total_bytes"].map(units.fmt_gib)),
                     hide_index=True)
            state.csv_download(gpus, f"{data.name}-gpus", "GPUs CSV")
        with st.expander(f"Events ({len(data.events)})"):
            ev = data.events[["t_s", "kind", "message", "pid", "engine_id"]]
            st.dataframe(ev, hide_index=True, width="stretch")
            state.csv_download(ev, f"{data.name}-events", "Events CSV")
