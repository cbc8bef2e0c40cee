"""Fleet page: every server of a session side by side, the worst first (``kvscope attach URL ...``)."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import state
from dashboard.data.fleet import SATURATED_KV_FRAC, fleet_memo
from dashboard.data.steps import View
from profiler.units import escape_markdown

BUCKETS = 200
COLUMNS = 4

data = state.current_session()
if data is not None:
    with state.session_errors(data.name):
        st.title(f"Fleet · {escape_markdown(data.name)}")
        table = fleet_memo(data.path)
        if len(table) < 2:
            what = "one server" if len(table) == 1 else "no engine"
            st.info(f"This session holds {what}: the fleet view compares the servers of one "
                    "attach (`kvscope attach URL URL ... --session S`).", icon=":material/info:")
            st.stop()
        st.caption(f"{len(table)} servers, worst first: data missing (gaps), then time saturated "
                   f"(KV ≥ {SATURATED_KV_FRAC:.0%} with requests waiting), preemptions per minute, "
                   "mean waiting requests, KV peak.")
        shown = table.drop(columns=["engine_ids"]).assign(rank=range(1, len(table) + 1))
        shown = shown[["rank", "server", *[c for c in shown.columns if c not in ("rank", "server")]]]
        st.dataframe(shown, hide_index=True, width="stretch", column_config={
            "missing_s": st.column_config.NumberColumn("data missing (s)", format="%.1f"),
            "saturated_frac": st.column_config.NumberColumn("saturated", format="percent"),
            "preemptions_per_min": st.column_config.NumberColumn("preemptions / min", format="%.2f"),
            "waiting_mean": st.column_config.NumberColumn("waiting (mean)", format="%.2f"),
            "waiting_max": st.column_config.NumberColumn("waiting (max)", format="%d"),
            "running_mean": st.column_config.NumberColumn("running (mean)", format="%.2f"),
            "kv_peak_frac": st.column_config.NumberColumn("KV peak", format="percent"),
            "kv_mean_frac": st.column_config.NumberColumn("KV mean", format="percent"),
            "prefix_hit_rate": st.column_config.NumberColumn("prefix hit rate", format="percent"),
            "generation_per_s": st.column_config.NumberColumn("generation tok/s", format="%.1f"),
        })
        state.csv_download(shown, f"{data.name}-fleet", "Fleet CSV")
        server_of = {int(e): row.server for row in table.itertuples() for e in row.engine_ids}
        t0, t1 = data.serving_range()
        b = state.buckets(data, View(t0, t1, BUCKETS))
        if b.empty:
            st.info("No scraped intervals in this session: nothing to draw per server.")
            st.stop()
        b = b.assign(server=b["engine_id"].astype(int).map(server_of),
                     t_s=(b["t_lo_s"] + b["t_hi_s"]) / 2)
        order = list(table["server"])
        for value, title, fmt in (("kv_usage_frac_max", "KV cache usage (max per bucket)", "%"),
                                  ("waiting_max", "Waiting requests (max per bucket)", "d")):
            df = b[["server", "t_s", value]].dropna()
            if df.empty:
                st.info(f"{title}: not reported by these servers.")
                continue
            st.subheader(title)
            chart = alt.Chart(df).mark_line(interpolate="step-after", strokeWidth=1.2).encode(
                x=alt.X("t_s:Q", title="time since session start (s)",
                        scale=alt.Scale(domain=[t0, t1], nice=False)),
                y=alt.Y(f"{value}:Q", title=None, axis=alt.Axis(format=fmt)),
                tooltip=["server:N"],  # a line's tooltip is its first point's: only what the whole line shares
            ).properties(width=190, height=90).facet(
                facet=alt.Facet("server:N", sort=order, title=None,
                                header=alt.Header(labelLimit=260, labelFontSize=11)),
                columns=COLUMNS).configure_mark(aria=False)
            st.altair_chart(chart, key=f"fleet-{value}")
