"""Memory page: the start-up budget waterfall, memory per process, allocator reserved vs allocated."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.charts import memory as charts_memory
from dashboard.data import derive
from dashboard.data.downsample import minmax_frame
from dashboard.data.steps import View
from profiler.units import escape_markdown

BUCKETS = 600

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Memory · {escape_markdown(data.name)}")
        st.subheader("Start-up memory budget")
        if data.startup_memory.empty:
            st.info("No start-up memory profile in this session (the worker did not report one).")
        for _, row in data.startup_memory.iterrows():
            device = row.get("device") or "?"
            where = "host RAM" if device == "cpu" else "device memory"
            wf = derive.startup_waterfall(row, f"{where} total")
            title = (f"Worker rank {int(row['rank']) if row['rank'] == row['rank'] else '?'} "
                     f"(pid {int(row['pid'])}, {device}): {where} → gpu_memory_utilization budget → consumers")
            if wf.empty:
                st.info(f"{title}: nothing reported.")
                continue
            state.show(charts_memory.waterfall_chart(wf, title), key=f"wf-{int(row['pid'])}")
            missing = wf.attrs.get("missing") or []
            if missing:
                st.caption("Not reported by this vLLM/backend (not zero): " + ", ".join(missing) +
                           ("; on the CPU backend vLLM sizes the KV cache from VLLM_CPU_KVCACHE_SPACE, "
                            "not from a memory profile." if device == "cpu" else "."))
            table = wf[["label", "value_gib", "end_gib"]].rename(
                columns={"value_gib": "size_gib", "end_gib": "cumulative_gib"})
            with st.expander("Waterfall numbers"):
                st.dataframe(table, hide_index=True)
                state.csv_download(table, f"{data.name}-startup-{int(row['pid'])}", "Waterfall CSV")

        whole = View(0.0, max(data.duration_s, 1e-3), BUCKETS)
        st.subheader("GPU memory per process")
        if data.gpu_process_samples.empty:
            if data.has_gpu_samples:
                st.info("NVML sampled the devices but reported no per-process memory.")
            else:
                state.not_measured("Memory per process", data, "nvml")
        else:
            ps = data.gpu_process_samples.dropna(subset=["used_bytes"])
            ps = minmax_frame(ps, "t_s", ["used_bytes"], whole.t0_s, whole.t1_s, BUCKETS, by="process")
            state.show(charts_memory.process_memory_chart(ps, whole), key="mem-proc")
            state.csv_download(ps, f"{data.name}-process-memory", "Per-process memory CSV")

        st.subheader("Allocator: reserved vs allocated per worker")
        st.caption("The gap between reserved and allocated is memory the torch caching allocator holds "
                   "but no tensor uses (cached free blocks, fragmentation).")
        if data.allocator_samples.empty:
            state.not_measured("Torch allocator", data, "allocator")
        else:
            al = minmax_frame(data.allocator_samples, "t_s", ["reserved_bytes", "allocated_bytes"],
                              whole.t0_s, whole.t1_s, BUCKETS, by="process")
            state.show(charts_memory.allocator_chart(al, whole), key="mem-alloc")
            last = data.allocator_samples.groupby("process").tail(1)
            gib = {c: c.replace("_bytes", "_gib") for c in ("allocated_bytes", "reserved_bytes",
                                                              "peak_allocated_bytes")}
            table = last[["process", *gib, "alloc_retries", "ooms"]].rename(columns=gib)
            for c in gib.values():
                table[c] = table[c] / 2**30
            st.caption("Last sample per worker")
            st.dataframe(table, hide_index=True, column_config={
                c: st.column_config.NumberColumn(c, format="%.3f") for c in gib.values()})
            state.csv_download(data.allocator_samples, f"{data.name}-allocator", "Allocator CSV")
