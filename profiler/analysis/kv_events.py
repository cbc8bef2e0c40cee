"""KV-event numbers derived from a session: resident blocks, evictions/s, re-stores after eviction.

A *re-store* is a BlockStored of a hash that an earlier BlockRemoved evicted: the engine computed
that block again because the cache had dropped it, the core signal of prefix-cache thrash. Only
the GPU tier is counted (medium ``GPU`` or unspecified); AllBlocksCleared empties the cache
without counting evictions. Pure functions of the ``kv_events`` rows: no vLLM, no Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from profiler.session.reader import Session

KV_COLUMNS = ("engine_id", "t_unix_s", "seq", "kind", "block_hash", "medium")


@dataclass
class KvEventSummary:
    """KV-cache behaviour seen through the event stream of every engine in a session."""

    engine_ids: list[int]
    stored_blocks: int
    """BlockStored block count (re-stores included)."""
    evicted_blocks: int
    """BlockRemoved block count."""
    restored_blocks: int
    """Stores of a hash evicted earlier in the stream."""
    clears: int
    t_start_unix_s: float | None
    t_end_unix_s: float | None
    evicted_s: np.ndarray = field(repr=False)
    """For every re-store, how long the block had been evicted (seconds)."""
    resident: pd.DataFrame = field(repr=False)
    """engine_id, t_unix_s, resident_blocks, capacity_blocks (after each batch)."""
    rates: pd.DataFrame = field(repr=False)
    """engine_id, t_unix_s (bin start), stores_per_s, evictions_per_s, restores_per_s."""
    restores: pd.DataFrame = field(repr=False)
    """engine_id, t_unix_s, evicted_s: one row per re-store."""
    gaps: int = 0
    """Intervals where KV events were lost (``gaps`` rows with source kv_events)."""
    bin_s: float = 1.0
    """Width of the time bins of ``rates``."""
    per_engine: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    """engine_id, stored_blocks, evicted_blocks, restored_blocks, clears: the counts per engine."""

    @property
    def has_events(self) -> bool:
        """True when the session holds any KV event."""
        return self.stored_blocks + self.evicted_blocks + self.clears > 0

    @property
    def restore_frac(self) -> float | None:
        """Share of stored blocks that were re-stores (None without stores)."""
        return self.restored_blocks / self.stored_blocks if self.stored_blocks else None

    @property
    def duration_s(self) -> float:
        """Span of the event stream in seconds."""
        if self.t_start_unix_s is None or self.t_end_unix_s is None:
            return 0.0
        return self.t_end_unix_s - self.t_start_unix_s

    @property
    def evictions_per_s(self) -> float | None:
        """Mean eviction rate over the stream (None when it spans no time)."""
        return self.evicted_blocks / self.duration_s if self.duration_s > 0 else None

    @property
    def peak_evictions_per_s(self) -> float | None:
        """Highest eviction rate of any engine over one ``bin_s`` bin."""
        return float(self.rates["evictions_per_s"].max()) if len(self.rates) else None

    @property
    def median_evicted_s(self) -> float | None:
        """Median time a re-stored block had spent evicted."""
        return float(np.median(self.evicted_s)) if len(self.evicted_s) else None


BIN_LADDER_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Rate bin widths to choose from: the smallest that gives at most MAX_BINS bins."""
MAX_BINS = 120


def auto_bin_s(duration_s: float) -> float:
    """A rate bin width for a stream of ``duration_s`` (about 30-120 bins)."""
    for b in BIN_LADDER_S:
        if duration_s / b <= MAX_BINS:
            return b
    return BIN_LADDER_S[-1]


def kv_event_summary(session: Session, bin_s: float | None = None) -> KvEventSummary:
    """Derive the KV-event numbers of ``session`` (an empty summary when it has no KV events).

    ``bin_s`` is the width of the rate bins (None: chosen from the stream's duration).
    """
    if not session.has_table("kv_events"):
        return summarize_kv_events(_empty_events(), {}, bin_s)
    events = session.table("kv_events", "ORDER BY engine_id, t_unix_s, seq, rowid")
    engines = session.table("engines")
    capacity = {
        int(r.engine_id): (None if pd.isna(r.num_gpu_blocks) else int(r.num_gpu_blocks))
        for r in engines.itertuples()
    }
    gaps = int(session.scalar("SELECT COUNT(*) FROM gaps WHERE source = 'kv_events'") or 0)
    out = summarize_kv_events(events, capacity, bin_s)
    out.gaps = gaps
    return out


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in KV_COLUMNS})


def summarize_kv_events(
    events: pd.DataFrame, capacity_blocks: dict[int, int | None], bin_s: float | None = None
) -> KvEventSummary:
    """Replay ``kv_events`` rows (sorted by engine, time, seq) into a KvEventSummary."""
    gpu = events[events["medium"].isna() | (events["medium"] == "GPU")] if len(events) else events
    if bin_s is None:
        span = float(gpu["t_unix_s"].max() - gpu["t_unix_s"].min()) if len(gpu) else 0.0
        bin_s = auto_bin_s(span)
    resident_rows: list[tuple[int, float, int, int | None]] = []
    restore_rows: list[tuple[int, float, float]] = []
    counts: list[tuple[int, int, int, int, int]] = []
    for engine_id, df in gpu.groupby("engine_id", sort=True):
        eid = int(engine_id)
        stored = evicted = clears = restored = 0
        cap = capacity_blocks.get(eid)
        resident: set[int] = set()
        evicted_at: dict[int, float] = {}
        last_key: tuple[float, int] | None = None
        for t, seq, kind, h in zip(df["t_unix_s"], df["seq"], df["kind"], df["block_hash"],
                                   strict=True):
            key = (float(t), int(seq))
            if last_key is not None and key != last_key:
                resident_rows.append((eid, last_key[0], len(resident), cap))
            last_key = key
            if kind == "stored":
                stored += 1
                block = int(h)
                if block in evicted_at:
                    restored += 1
                    restore_rows.append((eid, float(t), float(t) - evicted_at.pop(block)))
                resident.add(block)
            elif kind == "removed":
                evicted += 1
                block = int(h)
                resident.discard(block)
                evicted_at[block] = float(t)
            elif kind == "cleared":
                clears += 1
                resident.clear()
                evicted_at.clear()
        if last_key is not None:
            resident_rows.append((eid, last_key[0], len(resident), cap))
        counts.append((eid, stored, evicted, restored, clears))
    per_engine = pd.DataFrame(counts, columns=["engine_id", "stored_blocks", "evicted_blocks",
                                               "restored_blocks", "clears"])
    resident_df = pd.DataFrame(
        resident_rows, columns=["engine_id", "t_unix_s", "resident_blocks", "capacity_blocks"]
    )
    restores_df = pd.DataFrame(restore_rows, columns=["engine_id", "t_unix_s", "evicted_s"])
    t = gpu["t_unix_s"] if len(gpu) else pd.Series(dtype=float)
    return KvEventSummary(
        engine_ids=sorted(int(e) for e in gpu["engine_id"].dropna().unique()) if len(gpu) else [],
        stored_blocks=int(per_engine["stored_blocks"].sum()),
        evicted_blocks=int(per_engine["evicted_blocks"].sum()),
        restored_blocks=len(restore_rows), clears=int(per_engine["clears"].sum()),
        t_start_unix_s=float(t.min()) if len(t) else None,
        t_end_unix_s=float(t.max()) if len(t) else None,
        evicted_s=restores_df["evicted_s"].to_numpy(dtype=float),
        resident=resident_df, rates=_rates(gpu, restores_df, bin_s), restores=restores_df,
        bin_s=bin_s, per_engine=per_engine,
    )


def _rates(events: pd.DataFrame, restores: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    cols = ["engine_id", "t_unix_s", "stores_per_s", "evictions_per_s", "restores_per_s"]
    if not len(events):
        return pd.DataFrame(columns=cols)
    t0 = float(events["t_unix_s"].min())
    ev = events.assign(bin=((events["t_unix_s"] - t0) // bin_s).astype(int))
    counts = ev.groupby(["engine_id", "bin"])["kind"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["stored", "removed"], fill_value=0)
    if len(restores):
        rb = restores.assign(bin=((restores["t_unix_s"] - t0) // bin_s).astype(int))
        rcount = rb.groupby(["engine_id", "bin"]).size().rename("restored")
        counts = counts.join(rcount, how="left")
    else:
        counts["restored"] = 0
    counts = counts.fillna(0).reset_index()
    # Bins with no event at all are zero-rate, not missing: fill every engine's full range.
    full = []
    for eid, df in counts.groupby("engine_id"):
        idx = pd.RangeIndex(int(df["bin"].min()), int(df["bin"].max()) + 1, name="bin")
        df = df.set_index("bin").reindex(idx, fill_value=0).reset_index()
        df["engine_id"] = eid
        full.append(df)
    counts = pd.concat(full, ignore_index=True)
    return pd.DataFrame({
        "engine_id": counts["engine_id"].astype(int),
        "t_unix_s": t0 + counts["bin"] * bin_s,
        "stores_per_s": counts["stored"] / bin_s,
        "evictions_per_s": counts["removed"] / bin_s,
        "restores_per_s": counts["restored"] / bin_s,
    })
