"""Memory page: the start-up budget waterfall per worker, each GPU's memory by owner over time,
memory per process, allocator reserved vs allocated; OOM, engine start and findings marked."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import state
from dashboard.charts import marks as chart_marks
from dashboard.charts import memory as charts_memory
from dashboard.data import derive
from dashboard.data import marks as mk
from dashboard.data.attribution import device_attribution, shown_devices
from dashboard.data.downsample import minmax_frame
from dashboard.data.session import SessionData
from dashboard.data.steps import View
from profiler import units
from profiler.units import escape_markdown, is_number

BUCKETS = 600


def worker_device(data: SessionData, pid: int) -> int | None:
    """The GPU a worker used (its allocator or NVML process samples say), None when unknown."""
    for frame in (data.allocator_samples, data.gpu_process_samples):
        if not frame.empty and "device_index" in frame:
            d = frame[frame["pid"] == pid]["device_index"].dropna()
            if not d.empty:
                return int(d.iloc[0])
    return None


def waterfalls(data: SessionData, rep: dict[str, Any]) -> None:
    """One start-up waterfall per worker, its KV bar = what the cache held."""
    st.subheader("Start-up memory budget")
    if data.startup_memory.empty:
        st.info("No start-up memory profile in this session (no vLLM worker reported one).",
                icon=":material/info:")
        return
    kv = rep["kv_cache"]
    held = kv.get("size_bytes")
    blocks = rep["engine"].get("num_gpu_blocks")
    for _, row in data.startup_memory.sort_values(["rank", "t_s"], na_position="last").iterrows():
        device = row.get("device") or "?"
        where = "host RAM" if device == "cpu" else "device memory"
        kv_label = (f"KV cache held ({blocks:,} blocks × {units.fmt_bytes(kv['bytes_per_block'])})"
                    if held is not None and blocks is not None else "KV cache (start-up's figure)")
        wf = derive.startup_waterfall(row, f"{where} total", held, kv_label)
        pid = int(row["pid"])
        gpu = worker_device(data, pid)
        rank = f"rank {int(row['rank'])}" if is_number(row.get("rank")) else "rank n/a"
        on = f"GPU {gpu}" if gpu is not None else device
        title = f"Worker {rank} ({units.fmt_pid(pid)}, {on}): {where} → gpu_memory_utilization budget → consumers"
        if wf.empty:
            st.info(f"{title}: nothing reported.")
            continue
        state.show(charts_memory.waterfall_chart(wf, title), key=f"wf-{pid}")
        notes = []
        room = row.get("kv_cache_bytes")
        if is_number(room) and room < 0:
            notes.append(f"Start-up left no room for a KV cache: weights, activations and the rest used "
                         f"{units.fmt_gib(-room)} more than the budget.")
        elif is_number(room) and held is not None and room > held * 1.02:
            per = kv.get("bytes_per_block")
            notes.append(f"Start-up measured room for {units.fmt_gib(room)} of KV"
                         + (f" ({int(room // per):,} blocks)" if per else "")
                         + f"; the cache held {units.fmt_gib(held)} ({blocks:,} blocks, set by "
                         "num_gpu_blocks_override): the rest of the budget stayed free.")
        missing = wf.attrs.get("missing") or []
        if missing:
            notes.append("Not reported by this vLLM/backend (not zero): " + ", ".join(missing)
                         + ("; on the CPU backend vLLM sizes the KV cache from VLLM_CPU_KVCACHE_SPACE, "
                            "not from a memory profile." if device == "cpu" else "."))
        if held is None and blocks is not None:
            notes.append("Bytes per KV block not recorded in this session: the KV bar is start-up's "
                         "figure, not blocks × bytes per block.")
        for n in notes:
            st.caption(n)
        table = wf[["label", "value_gib", "end_gib"]].rename(columns={"value_gib": "size_gib",
                                                                       "end_gib": "cumulative_gib"})
        with st.expander("Waterfall numbers"):
            st.dataframe(table, hide_index=True)
            state.csv_download(table, f"{data.name}-startup-{pid}", "Waterfall CSV")


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Memory · {escape_markdown(data.name)}")
        rep, findings = state.report(data)
        waterfalls(data, rep)
        whole = View(0.0, max(data.duration_s, 1e-3), BUCKETS)
        marks = mk.session_marks(data, findings, state.get_focus(data))

        st.subheader("GPU memory by owner over time")
        if not data.has_gpu_samples:
            state.not_measured("GPU memory per device", data, "nvml")
        else:
            devices = shown_devices(data, findings)
            gpus = data.gpus.drop_duplicates("device_index").set_index("device_index")
            hidden = sorted(set(gpus.index.astype(int)) - set(devices))
            st.caption("NVML's device total split by who holds it: each engine worker's weights (start-up "
                       "profile), the KV cache it held (blocks × bytes per block) and the rest of what NVML "
                       "saw it use (activations + other); processes outside the session by pid; what no "
                       "listed process accounts for. " + chart_marks.LEGEND_TEXT
                       + (f" GPU {', '.join(map(str, hidden))} of the host: idle, not shown." if hidden else ""))
            for dev, why in devices.items():
                df = device_attribution(data, dev, whole.t0_s, whole.t1_s, BUCKETS, rep["kv_cache"].get("size_bytes"))
                name = gpus.loc[dev, "name"] if dev in gpus.index else "GPU"
                total = gpus.loc[dev, "total_bytes"] if dev in gpus.index else None
                title = f"GPU {dev} ({name}) by owner" + ("" if why == "engine" else f" · shown because {why}")
                panel = charts_memory.attribution_panel(df, whole, title, total, height=230)
                state.show(chart_marks.with_marks(panel.chart(), marks, whole), key=f"mem-attr-{dev}")

        st.subheader("GPU memory per process")
        if data.gpu_process_samples.empty:
            if data.has_gpu_samples:
                st.info("NVML sampled the devices but reported no per-process memory.")
            else:
                state.not_measured("Memory per process", data, "nvml")
        else:
            ps = data.gpu_process_samples.dropna(subset=["used_bytes"])
            ps = minmax_frame(ps, "t_s", ["used_bytes"], whole.t0_s, whole.t1_s, BUCKETS, by="process")
            state.show(chart_marks.with_marks(charts_memory.process_memory_chart(ps, whole), marks, whole),
                       key="mem-proc")
            state.csv_download(ps, f"{data.name}-process-memory", "Per-process memory CSV")

        st.subheader("Allocator: reserved vs allocated per worker")
        if data.allocator_samples.empty:
            state.not_measured("Torch allocator", data, "allocator")
        else:
            st.caption("The gap between reserved (solid) and allocated (dashed) is memory the torch caching "
                       "allocator holds but no tensor uses (cached free blocks, fragmentation).")
            al = minmax_frame(data.allocator_samples, "t_s", ["reserved_bytes", "allocated_bytes"],
                              whole.t0_s, whole.t1_s, BUCKETS, by="process")
            state.show(chart_marks.with_marks(charts_memory.allocator_chart(al, whole), marks, whole),
                       key="mem-alloc")
            last = data.allocator_samples.groupby("process").tail(1)
            gib = {c: c.replace("_bytes", "_gib") for c in ("allocated_bytes", "reserved_bytes",
                                                              "peak_allocated_bytes")}
            table = last[["process", *gib, "alloc_retries", "ooms"]].rename(columns=gib)
            for c in gib.values():
                table[c] = table[c] / 2**30
            table = table.astype({"alloc_retries": "Int64", "ooms": "Int64"})
            st.caption("Last sample per worker")
            st.dataframe(table, hide_index=True, column_config={
                c: st.column_config.NumberColumn(c, format="%.3f") for c in gib.values()})
            state.csv_download(data.allocator_samples, f"{data.name}-allocator", "Allocator CSV")
