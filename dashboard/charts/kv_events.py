"""KV-event views: headline numbers and Altair charts built from a ``KvEventSummary``."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from profiler.analysis.kv_events import KvEventSummary

TIME_TITLE = "time since session start (s)"
HEIGHT = 200


def headline(summary: KvEventSummary) -> list[tuple[str, str, str]]:
    """(label, value, help) cards for the top of the page."""

    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    frac = summary.restore_frac
    return [
        ("Blocks stored", f"{summary.stored_blocks:,}", "BlockStored events (one per KV block)"),
        ("Blocks evicted", f"{summary.evicted_blocks:,}", "BlockRemoved events on the GPU tier"),
        ("Re-stores", f"{summary.restored_blocks:,}",
         "stores of a block hash that had been evicted earlier: work redone because of eviction"),
        ("Re-store share", "n/a" if frac is None else f"{frac:.0%}",
         "re-stores / blocks stored"),
        ("Evictions/s (peak)", num(summary.peak_evictions_per_s, ".1f"),
         f"highest eviction rate of any engine over {summary.bin_s:g} s"),
        ("Median time evicted", "n/a" if summary.median_evicted_s is None
         else f"{summary.median_evicted_s:.2f} s", "how long a re-stored block had been evicted"),
    ]


def engine_names(engines: pd.DataFrame) -> dict[int, str]:
    """Display name per engine id: the attached URL (or model) and the engine index."""
    out: dict[int, str] = {}
    for r in engines.itertuples():
        base = r.label if isinstance(r.label, str) and r.label else (r.model or "engine")
        idx = "" if pd.isna(r.engine_index) else f" #{int(r.engine_index)}"
        out[int(r.engine_id)] = f"{base}{idx}"
    return out


def time_domain(summary: KvEventSummary, t0_unix_s: float) -> tuple[float, float]:
    """Shared x range of the time charts (starts before 0 when replayed history is included)."""
    if summary.t_start_unix_s is None or summary.t_end_unix_s is None:
        return (0.0, 1.0)
    lo = min(0.0, summary.t_start_unix_s - t0_unix_s)
    hi = summary.t_end_unix_s - t0_unix_s + summary.bin_s
    return (lo, max(hi, lo + 1e-3))


def _x(domain: tuple[float, float]) -> alt.X:
    return alt.X("t_s:Q", title=TIME_TITLE, scale=alt.Scale(domain=list(domain), nice=False))


def _with_names(df: pd.DataFrame, t0_unix_s: float, names: dict[int, str]) -> pd.DataFrame:
    out = df.copy()
    out["t_s"] = out["t_unix_s"] - t0_unix_s
    out["engine"] = out["engine_id"].map(lambda e: names.get(int(e), f"engine {int(e)}"))
    return out


def resident_chart(summary: KvEventSummary, t0_unix_s: float, names: dict[int, str]) -> alt.LayerChart:
    """Blocks holding cached content over time, against each engine's capacity (dashed)."""
    df = _with_names(summary.resident, t0_unix_s, names)
    line = alt.Chart(df).mark_line(interpolate="step-after").encode(
        x=_x(time_domain(summary, t0_unix_s)),
        y=alt.Y("resident_blocks:Q", title="resident blocks"),
        color=alt.Color("engine:N", title="engine"),
        tooltip=["engine:N"],  # a line's tooltip is its first point's: only what the whole line shares
    )
    cap = df.dropna(subset=["capacity_blocks"]).groupby("engine", as_index=False)["capacity_blocks"].max()
    rule = alt.Chart(cap).mark_rule(strokeDash=[6, 4], color="#333").encode(
        y="capacity_blocks:Q", tooltip=["engine:N", alt.Tooltip("capacity_blocks:Q", title="capacity")]
    )
    return alt.layer(line, rule).properties(height=HEIGHT, title="Resident blocks vs capacity")


def rates_long(summary: KvEventSummary, t0_unix_s: float, names: dict[int, str]) -> pd.DataFrame:
    """Evictions/s and re-stores/s per engine in long form (one row per time bin and series).

    Each engine gets a closing row at the end of its last bin so step lines cover every bin.
    """
    rates = summary.rates
    if len(rates):
        last = rates.loc[rates.groupby("engine_id")["t_unix_s"].idxmax()].copy()
        last["t_unix_s"] += summary.bin_s
        rates = pd.concat([rates, last], ignore_index=True)
    df = _with_names(rates, t0_unix_s, names)
    long = df.melt(id_vars=["engine", "t_s"], value_vars=["evictions_per_s", "restores_per_s"],
                   var_name="series", value_name="per_s")
    long["series"] = long["series"].map({"evictions_per_s": "evictions", "restores_per_s": "re-stores"})
    return long


def rates_chart(summary: KvEventSummary, t0_unix_s: float, names: dict[int, str]) -> alt.Chart:
    """Evictions and re-stores per second over time."""
    long = rates_long(summary, t0_unix_s, names)
    # several engines are told apart by dash pattern; one engine needs no second legend
    dash = ({"strokeDash": alt.StrokeDash("engine:N", title="engine")}
            if long["engine"].nunique() > 1 else {})
    return alt.Chart(long).mark_line(interpolate="step-after").encode(
        x=_x(time_domain(summary, t0_unix_s)),
        y=alt.Y("per_s:Q", title=f"blocks/s ({summary.bin_s:g} s bins)"),
        color=alt.Color("series:N", title=None,
                        scale=alt.Scale(domain=["evictions", "re-stores"], range=["#e45756", "#7b3294"])),
        **dash,
        tooltip=["engine:N", "series:N"],  # a line's tooltip is its first point's
    ).properties(height=HEIGHT, title="Evictions and re-stores")


def evicted_time_bins(evicted_s: np.ndarray, bins: int = 30) -> pd.DataFrame:
    """Histogram of time-evicted-before-restore: bin_start_s, bin_end_s, restores."""
    if len(evicted_s) == 0:
        return pd.DataFrame(columns=["bin_start_s", "bin_end_s", "restores"])
    hi = float(np.max(evicted_s))
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
    counts, _ = np.histogram(evicted_s, bins=edges)
    return pd.DataFrame({"bin_start_s": edges[:-1], "bin_end_s": edges[1:], "restores": counts})


def evicted_time_chart(summary: KvEventSummary) -> alt.Chart:
    """Distribution of how long re-stored blocks had been evicted (short = thrash)."""
    df = evicted_time_bins(summary.evicted_s)
    return alt.Chart(df).mark_bar(color="#7b3294").encode(
        x=alt.X("bin_start_s:Q", bin="binned", title="time evicted before re-store (s)"),
        x2="bin_end_s:Q",
        y=alt.Y("restores:Q", title="re-stores"),
        tooltip=[alt.Tooltip("bin_start_s:Q", format=".2f", title="from (s)"),
                 alt.Tooltip("bin_end_s:Q", format=".2f", title="to (s)"), "restores:Q"],
    ).properties(height=HEIGHT, title="Time evicted before re-store")
