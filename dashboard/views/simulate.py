"""Simulate a fix: change the KV cache size, max_num_seqs or gpu_memory_utilization and see the
predicted preemptions, queueing and prefix hit rate from this session's own requests; copy the
flags; then check the prediction against the re-run."""

from __future__ import annotations

import sqlite3
from typing import Any

import streamlit as st

from dashboard import state
from dashboard.data import verify
from dashboard.data.reports import model_memo
from dashboard.data.session import SessionData
from dashboard.findings_ui import SIMULATE_KEY, SIMULATED
from profiler.analysis.fixes import diff_text, flag_changes
from profiler.analysis.simulate import Model, Settings, blocks_for_hit_rate, util_for_blocks
from profiler.errors import KvscopeError
from profiler.units import escape_markdown, fmt_gib, fmt_pct, is_number


def _finding(data: SessionData) -> dict[str, Any] | None:
    """The finding the user came from (its Simulate button), when it was for this session; else
    the most severe finding that proposes a setting this page can try."""
    chosen = st.session_state.get(SIMULATE_KEY)
    if chosen and chosen.get("path") == str(data.path):
        return chosen["finding"]
    findings = state.report(data)[1]
    return next((f for f in findings if any(k in SIMULATED for k in (f.get("settings") or {}))), None)


def inputs(data: SessionData, m: Model, finding: dict[str, Any] | None) -> tuple[dict[str, Any], Settings, str]:
    """The settings to try (from the finding, then the user's edits): the change, the settings, a note."""
    rec = m.demand.recorded
    proposed = dict((finding or {}).get("settings") or {})
    key = f"sim::{data.path}::{(finding or {}).get('code', '')}"
    gpu = m.demand.bytes_per_block is not None and m.demand.startup.get("device") == "cuda"
    modes = ["KV blocks"] + (["gpu_memory_utilization"] if gpu else [])
    mode_default = 1 if gpu and "gpu_memory_utilization" in proposed and "num_gpu_blocks_override" not in proposed else 0
    c = st.columns([1.4, 1.2, 1.2, 1.2])
    mode = c[0].radio("Size the KV cache by", modes, index=mode_default, key=f"{key}::mode",
                      help="gpu_memory_utilization is turned into blocks with the start-up profile")
    change: dict[str, Any] = {}
    if mode == "KV blocks":
        blocks = int(c[1].number_input("KV blocks", min_value=2, max_value=10_000_000, step=1, key=f"{key}::blocks",
                                       value=int(proposed.get("num_gpu_blocks_override", rec.num_blocks))))
        if blocks != rec.num_blocks:
            change["num_gpu_blocks_override"] = blocks
    else:
        util0 = float(proposed.get("gpu_memory_utilization") or m.demand.gpu_memory_utilization or 0.9)
        util = float(c[1].number_input("gpu_memory_utilization", min_value=0.01, max_value=0.99, step=0.01,
                                       value=round(util0, 2), key=f"{key}::util", format="%.2f"))
        if m.demand.gpu_memory_utilization is None or abs(util - m.demand.gpu_memory_utilization) > 1e-9:
            change["gpu_memory_utilization"] = util
    seqs = int(c[2].number_input("max_num_seqs", min_value=1, max_value=65_536, step=1, key=f"{key}::seqs",
                                 value=int(proposed.get("max_num_seqs", rec.max_num_seqs))))
    if seqs != rec.max_num_seqs:
        change["max_num_seqs"] = seqs
    budget = int(c[3].number_input("max_num_batched_tokens", min_value=16, max_value=1_000_000, step=16,
                                   key=f"{key}::budget",
                                   value=int(proposed.get("max_num_batched_tokens", rec.max_num_batched_tokens))))
    if budget != rec.max_num_batched_tokens:
        change["max_num_batched_tokens"] = budget
    settings, note = m.settings_for(change)
    return change, settings, note


def render(data: SessionData) -> None:
    """Draw the page for ``data``."""
    st.title(f"Simulate a fix · {escape_markdown(data.name)}")
    finding = _finding(data)
    try:
        m = model_memo(data.path)
    except KvscopeError as exc:
        st.info(f"No request demand to replay in this session: {escape_markdown(str(exc))}.",
                icon=":material/info:")
        memory_only(data, finding)
        return
    if finding is not None:
        st.markdown(f"From finding **{escape_markdown(finding['code'])}**: "
                    f"{escape_markdown(finding.get('recommendation') or '')}")
    d = m.demand
    st.caption(f"The session's {len(d.requests):,} finished requests (arrival, prompt and output "
               "length, prompt-block hashes) replayed through a model of vLLM's scheduler; step time "
               f"fitted from its steps ({d.step_base_s * 1000:.2f} ms + {d.step_per_token_s * 1e6:.2f} µs "
               f"per token + {d.step_per_seq_s * 1000:.3f} ms per request, batches of up to "
               f"{d.fitted_max_batch}). Recorded: {verify.settings_text(d.recorded)}.")
    change, settings, note = inputs(data, m, finding)
    if note:
        st.caption(note)
    p = m.predict(settings)
    cols = {"measured in this session": _measured(data, m), "model at the recorded settings": m.baseline,
            "predicted at the new settings": p}
    st.subheader("Prediction")
    st.table(verify.table(cols), hide_index=True)
    _error_note(m)
    warn = []
    rec = m.demand.recorded
    if settings.max_num_seqs < rec.max_num_seqs / 2:
        warn.append(f"max_num_seqs {rec.max_num_seqs} → {settings.max_num_seqs} shrinks the batch: the model "
                    f"predicts end-to-end p50 {verify.fmt_value(p.e2e_p50_s, 's')} (recorded model "
                    f"{verify.fmt_value(m.baseline.e2e_p50_s, 's')}) and the requests take "
                    f"{p.span_s:,.1f} s instead of {m.baseline.span_s:,.1f} s.")
    disagree = (is_number(p.prefix_hit_rate) and is_number(p.model_hit_rate)
                and abs(p.prefix_hit_rate - p.model_hit_rate) > 0.10)
    if disagree:
        warn.append(f"The what-if curve ({fmt_pct(p.prefix_hit_rate)}) and the scheduler model "
                    f"({fmt_pct(p.model_hit_rate)}) disagree on the hit rate: at this size the prefixes only "
                    "just fit, and with this setting's concurrency the running requests' blocks still push "
                    "them out (on prefix_thrash at 133 blocks the re-run measured 43.6 %, the scheduler "
                    "model's number). Find the size the scheduler model needs below.")
    if not p.complete:
        warn.append(f"The simulation finished {p.finished:,} of {len(m.demand.requests):,} requests (a request "
                    "larger than the cache cannot run, or the step limit was reached).")
    note_times = verify.times_note(m, p)
    if note_times:
        warn.append(note_times)
    for w in warn:
        st.warning(w, icon=":material/warning:")
    if "max_num_seqs" not in change and "gpu_memory_utilization" in change:
        need = util_for_blocks(m.demand, settings.num_blocks)
        if need is not None:
            st.caption(f"{settings.num_blocks:,} blocks need gpu_memory_utilization ≥ {need:.2f}.")

    if m.curve is not None and m.curve.max_hit_rate:
        target = 0.9 * m.curve.max_hit_rate
        if st.button(f"Find the smallest cache keeping 90 % of the reusable prefixes ({fmt_pct(target)} hit rate) "
                     "in the scheduler model", icon=":material/search:", key=f"sim-find::{data.path}"):
            need = blocks_for_hit_rate(m, target, settings)
            st.session_state[f"sim-found::{data.path}"] = need
        found = st.session_state.get(f"sim-found::{data.path}", False)
        if found is None:
            st.caption("The scheduler model does not reach that hit rate even at four times the what-if size.")
        elif found:
            st.caption(f"The scheduler model keeps 90 % of the reusable prefixes from **{found:,} blocks** on "
                       f"(the what-if curve: {m.curve.blocks_for(0.9) or 'n/a'}); put it in KV blocks above.")

    st.subheader("The flags to change")
    changes = flag_changes(change, data.engine(), data.meta.get("command"))
    if changes:
        st.code(diff_text(changes, data.meta.get("model") or data.engine().get("model")), language="diff")
        if "num_gpu_blocks_override" in change and data.engine().get("device") == "cpu":
            st.caption("CPU backend: the cache must also fit VLLM_CPU_KVCACHE_SPACE.")
    else:
        st.caption("Nothing changed from the recorded settings yet.")

    st.subheader("Verify: compare with the re-run")
    st.caption("Record the same workload with these flags, open the file here (the sidebar, or Compare's "
               "\"add a session\"), and pick it: the prediction stands beside what the re-run measured.")
    others = [s for s in state.sources() if s.path != state.current_source().path]  # type: ignore[union-attr]
    if not others:
        st.info("No other session to compare with yet.")
        return
    labels = [s.label for s in others]
    chosen = st.selectbox("Re-run session", labels, index=None, placeholder="choose the re-run",
                          key=f"sim-rerun::{data.path}", format_func=lambda lb: state.picker_text(
                              next(s for s in others if s.label == lb)))
    if chosen is None:
        return
    src = next(s for s in others if s.label == chosen)
    b = state.load_or_error(src)
    if b is None:
        return
    with state.session_errors(src.label):
        rep_b = state.report(b)[0]
        check = verify.rerun_check(m, rep_b, state.requests(b))
        if check is None:
            st.info("The re-run has no KV cache size: nothing to check the prediction against.")
            return
        s_b, p_b, tbl = check
        st.markdown(f"A's model at B's settings ({escape_markdown(verify.settings_text(s_b))}) beside B's "
                    "measurement:")
        st.table(tbl, hide_index=True)
        note_b = verify.times_note(m, p_b)
        if note_b:
            st.caption(note_b)
        if st.button("Open both on Compare", icon=":material/compare_arrows:"):
            st.session_state[state.chosen_key("compare_a")] = state.current_source().label  # type: ignore[union-attr]
            st.session_state[state.chosen_key("compare_b")] = src.label
            for key in ("compare_a", "compare_b"):
                st.session_state.pop(key, None)
            st.switch_page("views/compare.py")


def memory_only(data: SessionData, finding: dict[str, Any] | None) -> None:
    """Without requests to replay, what a ``gpu_memory_utilization`` leaves the KV cache, from the
    start-up profile (an OOM at start-up, or before the first request finished)."""
    rep = state.report(data)[0]
    if data.startup_memory.empty or data.startup_memory.iloc[0].get("device") != "cuda":
        return
    row = {k: v for k, v in data.startup_memory.iloc[0].to_dict().items()}
    total = row.get("total_bytes")
    if not is_number(total):
        return
    used = sum(float(row[k]) for k in ("weights_bytes", "activation_peak_bytes", "non_torch_bytes",
                                       "cuda_graph_bytes") if is_number(row.get(k)))
    proposed = ((finding or {}).get("settings") or {}).get("gpu_memory_utilization")
    util0 = float(proposed or rep["engine"].get("gpu_memory_utilization") or (used / total + 0.05))
    util = float(st.number_input("gpu_memory_utilization", min_value=0.01, max_value=0.99, step=0.01,
                                 value=round(util0, 2), format="%.2f", key=f"sim-mem::{data.path}"))
    room = util * float(total) - used
    per = rep["kv_cache"].get("bytes_per_block")
    blocks = int(room // per) if per and room > 0 else None
    bs = rep["engine"].get("block_size")
    if room <= 0:
        st.warning(f"At {util:.2f} start-up still has no room for a KV cache: weights, activations and the "
                   f"rest need {used / total:.2f} of the device ({fmt_gib(used)}).", icon=":material/warning:")
    else:
        extra = (f" = {blocks:,} blocks" + (f" of {bs} tokens ({blocks * bs:,} tokens)" if bs else "")
                 if blocks is not None else " (bytes per block not recorded: no block count)")
        st.success(f"At gpu_memory_utilization {util:.2f} the start-up profile leaves {fmt_gib(room)} for the "
                   f"KV cache{extra}.", icon=":material/check_circle:")
    changes = flag_changes({"gpu_memory_utilization": util}, data.engine(), data.meta.get("command"))
    st.code(diff_text(changes, data.meta.get("model") or data.engine().get("model")), language="diff")


def _measured(data: SessionData, m: Model) -> dict[str, Any]:
    rep = state.report(data)[0]
    out = verify.measured_numbers(rep)
    reqs = state.requests(data)
    if not reqs.empty:
        q = reqs["queued_s"].dropna()
        out["queued_p50_s"] = float(q.quantile(0.5)) if len(q) else None
        pre = reqs["preemptions"].dropna()
        out["preempted_requests"] = int((pre > 0).sum()) if len(pre) == len(reqs) else None
    return out


def _error_note(m: Model) -> None:
    measured, base = m.measured.get("preemptions"), m.baseline.preemptions
    parts = []
    if is_number(measured):
        if measured == 0 and base == 0:
            parts.append("at the recorded settings the model, like the session, has no preemptions")
        elif measured:
            parts.append(f"at the recorded settings the model gives {base:,} preemptions where the session "
                         f"measured {int(measured):,} (×{base / measured:.2f})")
    q = m.measured.get("queued_p50_s")
    if is_number(q) and is_number(m.baseline.queued_p50_s):
        parts.append(f"queue p50 {verify.fmt_value(m.baseline.queued_p50_s, 's')} vs {verify.fmt_value(q, 's')} measured")
    if parts:
        st.caption("How far to trust it: " + "; ".join(parts) + ". Read the predictions with that error.")


data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        try:
            render(data)
        except sqlite3.DatabaseError as exc:
            state.cannot_use(data.name, exc)
