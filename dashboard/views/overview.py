"""Overview page: what happened, the key numbers, the findings (with their fixes), what ran where."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import sections, state
from dashboard.charts import marks as chart_marks
from dashboard.charts import memory as chart_memory
from dashboard.charts import panels as charts
from dashboard.data import marks as mk
from dashboard.data import summary, tables
from dashboard.data.attribution import device_attribution, shown_devices
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from dashboard.findings_ui import finding_cards
from profiler import units
from profiler.units import escape_markdown

CARDS_PER_ROW = 5


def engine_and_machine(data: SessionData, rep: dict[str, Any], findings: list[dict[str, Any]]) -> None:
    """Model, versions, command; engine settings; the GPUs that matter; the events."""
    st.subheader("Engine and machine")
    meta = data.meta
    eng = data.engine()
    left, right = st.columns(2)
    info = {
        "model": rep["session"]["model"], "vLLM": rep["session"]["vllm_version"],
        "kvscope": meta.get("kvscope_version"), "host": meta.get("host"),
        "device": eng.get("device"), "engines": rep["engines"], "workers": rep.get("workers"),
        "command": " ".join(str(c) for c in meta.get("command") or []),
    }
    # Small key-value tables: static HTML (st.table), not the interactive grid, so the page stays light.
    left.table(pd.DataFrame({"field": list(info), "value": [
        units.NOT_MEASURED if v is None or v == "" else str(v) for v in info.values()]}), hide_index=True)
    config_cols = ["engine_id", "block_size", "num_gpu_blocks", "gpu_memory_utilization",
                   "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens", "max_model_len",
                   "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "kv_cache_dtype"]
    if data.engines.empty:
        right.info("No vLLM engine was created in this session: no engine settings.")
    else:
        cfg = data.engines[[c for c in config_cols if c in data.engines]].T.reset_index()
        cfg.columns = ["setting"] + [f"engine {int(e)}" for e in data.engines["engine_id"]]
        right.table(cfg.map(lambda v: units.NOT_MEASURED if pd.isna(v) else str(v)), hide_index=True)
        state.csv_download(data.engines, f"{data.name}-engines", "Engine config CSV")
    if data.gpus.empty:
        st.caption("GPUs: not measured on this machine (no NVML).")
    else:
        why = shown_devices(data, findings)
        gpus = data.gpus.drop_duplicates("device_index")
        shown = gpus[gpus["device_index"].isin(list(why))]
        table = pd.DataFrame({
            "GPU": shown["device_index"].astype(int).astype(str), "name": shown["name"].fillna(units.NOT_MEASURED),
            "total": shown["total_bytes"].map(units.fmt_gib),
            "why shown": [("the session's processes used it" if why[int(d)] == "engine" else why[int(d)])
                          for d in shown["device_index"]]})
        st.table(table, hide_index=True)
        hidden = len(gpus) - len(shown)
        if hidden:
            st.caption(f"{hidden} other GPU{'s' if hidden != 1 else ''} of the host not shown: idle and not "
                       "used by this session's processes.")
        state.csv_download(gpus, f"{data.name}-gpus", "GPUs CSV")
    with st.expander(f"Events ({len(data.events)})"):
        ev = data.events[["t_s", "kind", "message", "pid", "engine_id"]]
        st.dataframe(tables.shown(ev, keep=tuple(ev.columns)), hide_index=True, width="stretch")
        state.csv_download(ev, f"{data.name}-events", "Events CSV")


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Overview · {escape_markdown(data.name)}")
        status = "complete" if data.complete else "INCOMPLETE: the recording was cut off"
        st.caption(f"{escape_markdown(data.path)} · {status}")
        # A large session being diagnosed (once, stored): its charts first, from the summaries.
        pending = state.report_pending(data.path)
        rep, findings = ({}, []) if pending else state.report(data)
        if pending:
            st.info("This session is being diagnosed (below): its key numbers and findings appear "
                    "here when that is done; meanwhile the charts are drawn from its stored "
                    "summaries.", icon=":material/hourglass_top:")
        else:
            st.markdown(f"**{escape_markdown(rep['headline'])}**")
            numbers = summary.key_numbers(rep)
            for start in range(0, len(numbers), CARDS_PER_ROW):
                cols = st.columns(CARDS_PER_ROW)
                for col, n in zip(cols, numbers[start:start + CARDS_PER_ROW], strict=False):
                    col.metric(n.label, n.value, delta=n.card_detail or None, delta_color="off",
                               delta_arrow="off", help=n.help or None)
            missing = summary.not_measured(rep)
            if missing:
                st.caption("Not measured in this session: " + "; ".join(missing) + ".")

        marks = mk.session_marks(data, findings)
        if data.steps.total_steps:
            t0, t1 = data.serving_range()
            view = View(t0, t1, 500)
            b = state.buckets(data, view)
            left, right = st.columns(2)
            with left:
                state.show(chart_marks.with_marks(charts.kv_usage_chart(b, view, data.num_blocks(), height=160),
                                                  marks, view), key="ov-kv")
            with right:
                state.show(chart_marks.with_marks(charts.queue_chart(b, view, height=160), marks, view),
                           key="ov-queue")
            st.caption(chart_marks.LEGEND_TEXT)
        elif data.has_gpu_samples:
            # no engine step: the memory is the story (start-up, an OOM, a process without vLLM)
            view = View(0.0, max(data.duration_s, 1e-3), 400)
            gpus = data.gpus.drop_duplicates("device_index").set_index("device_index")
            for dev in shown_devices(data, findings):
                df = device_attribution(data, dev, view.t0_s, view.t1_s, 400,
                                        (rep.get("kv_cache") or {}).get("size_bytes"))
                total = gpus.loc[dev, "total_bytes"] if dev in gpus.index else None
                panel = chart_memory.attribution_panel(df, view, f"GPU {dev} memory by owner", total, height=180)
                state.show(chart_marks.with_marks(panel.chart(), marks, view), key=f"ov-gpu-{dev}")
            st.caption("No engine step completed in this session, so there is no KV or queue chart; "
                       "GPU memory is shown instead. " + chart_marks.LEGEND_TEXT)
        else:
            st.caption("No engine steps and no GPU samples in this session: nothing to chart.")
        if pending:  # wait for the diagnosis (a spinner says so), then draw the whole page
            state.report(data)
            st.rerun()
        sections.spec_decode_summary(rep)

        st.subheader("Findings")
        if not findings:
            st.success("No findings: the diagnosis rules found nothing to flag in this session.",
                       icon=":material/check_circle:")
        finding_cards(data, findings)
        engine_and_machine(data, rep, findings)
