"""Sessions in shards: one engine over several hosts, each host writing its own session file.

A *folder session* is a directory (named ``NAME.kvscope`` by convention) holding one shard per
recording process, ``<host>-<pid>.kvscope``: each an ordinary session file of this schema, with the
meta keys ``shard`` (who wrote it), ``node_rank`` and ``nnodes`` (vLLM's multi-node launch, written
by the workers). ``profiler.session.reader.open_session`` reads such a folder as one session through
``merged_file``: the shards' checked rows copied into one file, ids renumbered so they cannot
collide (``copy_shard``). The same copy folds a shard that a Ray worker handed back at shutdown into
the driver's session (``profiler.recorder.ray_shards``). SCHEMA.md ("Shards") documents the rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler import units
from profiler.session.schema import ENGINE_HEADLESS, ENGINE_INPROC, TABLES, create_or_check, ddl

SHARD_SUFFIX = ".kvscope"
SHARD_KEY = "shard"
"""Meta key of a shard: ``{"host", "pid", "role"}`` (+ ``ray_node_id``, ``ray_rank``)."""
SHARDS_KEY = "shards"
"""Meta key of a merged session: one object per shard, in ``ShardInfo`` fields."""
SHARD_NOTES_KEY = "shard_notes"
"""Meta key of a merged session: the shards' own reader notes, each prefixed with its file."""
PID_STRIDE = units.PID_STRIDE
"""A shard's pids read as ``pid_offset + pid``; offsets are multiples of this (above Linux's
largest pid, 4,194,304), so the real pid is the remainder and two hosts' pids never collide."""
GAP_SOURCE = "shard"
"""``gaps.source`` of the time a shard does not cover (missing, cut off, not handed back)."""

_ENGINE_TABLES = tuple(t for t, cols in TABLES.items() if "engine_id" in cols)
_PID_TABLES = tuple(t for t, cols in TABLES.items() if "pid" in cols)
_DEVICE_TABLES = tuple(t for t, cols in TABLES.items() if "device_index" in cols)
_SUMMARY_FREE = tuple(t for t in TABLES if t != "meta")
_META_FROM_ANY = ("command", "vllm_version", "model", "kvscope_version", "heartbeat", "host")


@dataclass(frozen=True)
class Offsets:
    """What a shard's ids are shifted by in the session it is copied into."""

    engine_id: int
    pid: int
    device_index: int


def shard_file_name(host: str, pid: int) -> str:
    """``<host>-<pid>.kvscope`` (host reduced to file-name-safe characters)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", host or "host")[:64]
    return f"{safe}-{pid}{SHARD_SUFFIX}"


def shard_files(folder: Path) -> list[Path]:
    """The shard files of a folder session, by name."""
    return sorted(p for p in folder.glob(f"*{SHARD_SUFFIX}") if p.is_file())


def next_offsets(dst: sqlite3.Connection) -> Offsets:
    """Offsets that put a new shard's ids after every id already in ``dst``."""
    def top(table: str, col: str) -> int:
        v = dst.execute(f"SELECT MAX({col}) FROM main.{table}").fetchone()[0]
        return int(v) if isinstance(v, int | float) else -1

    engine = max(top(t, "engine_id") for t in _ENGINE_TABLES)
    pid = max(top(t, "pid") for t in _PID_TABLES)
    device = max(top(t, "device_index") for t in _DEVICE_TABLES)
    return Offsets(engine_id=max(engine, 0),
                   pid=0 if pid < 0 else (pid // PID_STRIDE + 1) * PID_STRIDE,
                   device_index=device + 1)


def copy_shard(dst: sqlite3.Connection, src: sqlite3.Connection) -> Offsets:
    """Append every row of the shard ``src`` (a reader connection: its checked views) to ``dst``
    with engine ids, pids and device indices shifted past ``dst``'s own; meta is not copied.

    A shard from a machine already copied (two node ranks on one host: a GPU of the same UUID, the
    same host name, no pid in common) keeps its pids (one pid space), and the GPUs already copied
    keep their index, their samples taken once (the first recorder's). Runs inside the caller's
    transaction; returns the offsets used (``pid`` 0 on the same machine)."""
    for stmt in ddl():  # a session of an older kvscope lacks the optional tables
        dst.execute(stmt)
    off = next_offsets(dst)
    known = dict(dst.execute("SELECT uuid, device_index FROM main.gpus WHERE uuid IS NOT NULL"))
    seen = {int(i): known[u] for i, u in src.execute("SELECT device_index, uuid FROM gpus")
            if u in known and isinstance(i, int)}
    if seen and _same_pid_space(dst, src):
        off = Offsets(engine_id=off.engine_id, pid=0, device_index=off.device_index)
    device = (f"CASE {' '.join(f'WHEN {i} THEN {j}' for i, j in seen.items())} "
              f"ELSE \"device_index\" + {off.device_index} END") if seen else None
    for table in _SUMMARY_FREE:
        cols = TABLES[table]
        shift = {c: f'"{c}" + {o}' for c, o in (("engine_id", off.engine_id), ("pid", off.pid),
                                                 ("device_index", off.device_index))
                 if c in cols and o}
        if device and "device_index" in cols:
            shift["device_index"] = device
        where = ""
        if seen and table in ("gpus", "gpu_samples", "gpu_process_samples"):
            where = f" WHERE device_index NOT IN ({', '.join(map(str, seen))})"
        sel = ", ".join(shift.get(c, f'"{c}"') for c in cols)
        rows = src.execute(f"SELECT {sel} FROM {table}{where}").fetchall()
        if rows:
            dst.executemany(f"INSERT INTO main.{table} VALUES ({', '.join('?' * len(cols))})", rows)
    return off


def _same_pid_space(dst: sqlite3.Connection, src: sqlite3.Connection) -> bool:
    """Whether ``src``'s processes share ``dst``'s pid space: the same host names, no pid in common
    (called once a GPU of the same UUID says the same machine)."""
    hosts = {h for (h,) in src.execute("SELECT DISTINCT host FROM processes")}
    have = {h for (h,) in dst.execute("SELECT DISTINCT host FROM main.processes")}
    if not hosts or None in hosts or not hosts <= have:
        return False
    pids = [p for (p,) in src.execute("SELECT pid FROM processes") if isinstance(p, int)]
    return not any(dst.execute(f"SELECT 1 FROM main.processes WHERE pid IN ({', '.join('?' * len(chunk))}) "
                               "LIMIT 1", chunk).fetchone()
                   for chunk in (pids[i:i + 500] for i in range(0, len(pids), 500)))


def join_headless_engines(dst: sqlite3.Connection) -> None:
    """Multi-node data parallelism: an engine core on a headless node wrote its own ``engines``
    row (``source`` = ``headless``: its shard has no frontend). Map each onto the frontend's row of
    the same ``engine_index`` (from another shard): its rows take the frontend's engine id, the
    frontend's row takes the blocks only the core knew, and the placeholder goes. A rank whose
    frontend was not recorded keeps its own row."""
    heads = dst.execute("SELECT engine_id, engine_index, num_gpu_blocks FROM main.engines "
                        "WHERE source = ?", (ENGINE_HEADLESS,)).fetchall()
    for own, index, blocks in heads:
        row = dst.execute("SELECT engine_id FROM main.engines WHERE source = ? AND "
                          "engine_index = ? ORDER BY engine_id LIMIT 1",
                          (ENGINE_INPROC, index)).fetchone()
        if row is None:
            continue
        for table in _ENGINE_TABLES:
            if table != "engines":
                dst.execute(f"UPDATE main.{table} SET engine_id = ? WHERE engine_id = ?", (row[0], own))
        dst.execute("UPDATE main.engines SET num_gpu_blocks = COALESCE(num_gpu_blocks, ?) "
                    "WHERE engine_id = ?", (blocks, row[0]))
        dst.execute("DELETE FROM main.engines WHERE engine_id = ?", (own,))


@dataclass
class ShardInfo:
    """One shard of a folder session, as the merged session's meta ``shards`` lists it."""

    file: str
    host: str | None = None
    pid: int | None = None
    node_rank: int | None = None
    nnodes: int | None = None
    complete: bool = False
    started_unix_s: float | None = None
    last_unix_s: float | None = None
    engine_id_offset: int | None = None
    pid_offset: int | None = None
    device_index_offset: int | None = None
    reason: str | None = None
    """Why this shard is not complete (cut off, unreadable); None when complete."""


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def merged_file(folder: Path, open_shard: Callable[[Path], Any]) -> Path:
    """The one-file session equal to the folder session ``folder``, built on first use into the
    temp folder and reused while no shard changes (keyed by every shard's name, size and mtime).
    ``open_shard`` is the reader's ``open_session`` (each shard is read through its checks)."""
    from profiler.errors import SessionFormatError

    files = shard_files(folder)
    if not files:
        raise SessionFormatError(f"{folder}: is a directory with no session shards "
                                 f"(*{SHARD_SUFFIX}), not a session")
    state = hashlib.sha1(str(folder.resolve()).encode())
    key = state.hexdigest()[:16]
    state.update(Path(__file__).read_bytes())  # a kvscope whose join differs builds it again
    for f in files:
        st = f.stat()
        state.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        for side in ("-wal",):
            with contextlib.suppress(OSError):
                sw = Path(str(f) + side).stat()
                state.update(f"{side}:{sw.st_size}:{sw.st_mtime_ns}".encode())
    cache = Path(tempfile.gettempdir()) / f"kvscope-merged-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    out = cache / f"{key}-{state.hexdigest()[:16]}.kvscope"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _build(folder, files, tmp, open_shard)
    os.replace(tmp, out)
    for old in cache.glob(f"{key}-*.kvscope"):
        if old != out:
            with contextlib.suppress(OSError):
                old.unlink()
    return out


def _build(folder: Path, files: list[Path], out: Path, open_session: Callable[[Path], Any]) -> None:
    from profiler.errors import KvscopeError

    dst = sqlite3.connect(str(out), isolation_level=None)
    try:
        create_or_check(dst)
        dst.execute("BEGIN")
        opened, infos, notes = [], [], []
        for f in files:
            try:
                s = open_session(f)
            except KvscopeError as exc:
                infos.append(ShardInfo(file=f.name, reason=f"unreadable: {exc}"))
                continue
            opened.append((f, s))
        # the driver's shard first: node rank 0, the one with a frontend's engines, the earliest
        def order(item: tuple[Path, Any]) -> tuple[int, int, float, str]:
            f, s = item
            meta = s.meta()
            rank = _int(meta.get("node_rank"))
            engines = s.scalar("SELECT COUNT(*) FROM engines WHERE source IS NOT ?",
                               (ENGINE_HEADLESS,)) or 0
            return (rank if rank is not None else 0, 0 if engines else 1,
                    float(s.bounds()[0] or 0.0), f.name)

        metas: list[dict[str, Any]] = []
        for f, s in sorted(opened, key=order):
            with s:
                meta = s.meta()
                start, last = s.bounds()
                shard = meta.get(SHARD_KEY) if isinstance(meta.get(SHARD_KEY), dict) else {}
                off = copy_shard(dst, s.db)
                complete = meta.get("ended_unix_s") is not None and not meta.get("incomplete_reason")
                info = ShardInfo(
                    file=f.name, host=shard.get("host") or meta.get("host"), pid=_int(shard.get("pid")),
                    node_rank=_int(meta.get("node_rank")), nnodes=_int(meta.get("nnodes")),
                    complete=complete, started_unix_s=start, last_unix_s=last,
                    engine_id_offset=off.engine_id, pid_offset=off.pid,
                    device_index_offset=off.device_index,
                    reason=None if complete else (meta.get("incomplete_reason")
                                                  or "cut off: the shard's recorder did not finish"))
                infos.append(info)
                metas.append(meta)
                notes += [f"{f.name}: {n}" for n in s.notes()]
        join_headless_engines(dst)
        _write_meta(dst, folder, infos, metas, notes)
        dst.execute("COMMIT")
    finally:
        dst.close()


def _write_meta(dst: sqlite3.Connection, folder: Path, infos: list[ShardInfo],
                metas: list[dict[str, Any]], notes: list[str]) -> None:
    """The merged meta: the driver's keys, time bounds over every shard, completeness over every
    expected shard (a gap per shard that is missing or cut off)."""
    meta: dict[str, Any] = {}
    for m in metas:  # the driver's values first, others fill what it lacks
        for k in _META_FROM_ANY:
            if k in m and k not in meta:
                meta[k] = m[k]
    starts = [m["started_unix_s"] for m in metas if "started_unix_s" in m]
    starts += [i.started_unix_s for i in infos if i.started_unix_s is not None]
    lasts = [i.last_unix_s for i in infos if i.last_unix_s is not None]
    t0 = min(starts) if starts else None
    t1 = max(lasts + [m["ended_unix_s"] for m in metas if "ended_unix_s" in m], default=t0)
    if t0 is not None:
        meta["started_unix_s"] = t0
    reasons: list[str] = []
    expected = max((i.nnodes for i in infos if i.nnodes), default=None)
    ranks = {i.node_rank for i in infos if i.node_rank is not None}
    for rank in sorted(set(range(expected or 0)) - ranks):
        why = (f"no shard from node rank {rank} of {expected} in {folder.name}: that node's "
               "processes were not recorded")
        reasons.append(why)
        _gap(dst, t0, t1, why)
    for why in _dp_ranks_missing(dst, folder.name):
        reasons.append(why)
        _gap(dst, t0, t1, why)
    for i in infos:
        if i.reason is not None:
            where = f"{i.file} ({i.host or 'host unknown'}" + (
                f", node rank {i.node_rank})" if i.node_rank is not None else ")")
            why = f"{where}: {i.reason}"
            reasons.append(why)
            _gap(dst, i.last_unix_s if i.last_unix_s is not None else t0, t1, why)
    codes = [m.get("exit_code") for m in metas if isinstance(m.get("exit_code"), int)]
    if codes:
        meta["exit_code"] = next((c for c in codes if c != 0), 0)
    if reasons:
        meta["incomplete_reason"] = "; ".join(reasons)
    elif t1 is not None:
        meta["ended_unix_s"] = max([m["ended_unix_s"] for m in metas if "ended_unix_s" in m] or [t1])
    meta["hosts"] = sorted({i.host for i in infos if i.host})
    meta[SHARDS_KEY] = [vars(i) for i in infos]
    meta[SHARD_NOTES_KEY] = notes
    dst.executemany("INSERT OR REPLACE INTO main.meta VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in meta.items()])


def _dp_ranks_missing(dst: sqlite3.Connection, folder_name: str) -> list[str]:
    """Multi-node data parallelism with a node left unrecorded, one reason per DP rank: a rank the
    frontend describes whose engine core no shard recorded, or an engine core of a headless node
    whose frontend (on the head node) no shard recorded."""
    cores = dst.execute(
        "SELECT DISTINCT e.engine_index FROM main.engines e WHERE e.source = ? "
        "AND e.data_parallel_size > 1 AND e.engine_index IS NOT NULL AND NOT EXISTS ("
        "SELECT 1 FROM main.processes p WHERE p.role = 'engine_core' AND p.rank = e.engine_index) "
        "ORDER BY e.engine_index", (ENGINE_INPROC,)).fetchall()
    heads = dst.execute("SELECT DISTINCT engine_index FROM main.engines WHERE source = ? "
                        "ORDER BY engine_index", (ENGINE_HEADLESS,)).fetchall()
    return [f"no engine core of DP rank {r[0]} in any shard of {folder_name}: its node was not "
            "recorded, or its engine core failed before allocating its KV cache" for r in cores] + [
            f"no frontend of DP rank {r[0]} in any shard of {folder_name}: the head node was not "
            "recorded (its steps and requests are missing)" for r in heads]


def _gap(dst: sqlite3.Connection, t0: float | None, t1: float | None, reason: str) -> None:
    if t0 is None or t1 is None:
        return
    dst.execute("INSERT INTO main.gaps VALUES (?, ?, ?, ?, ?)",
                (None, float(t0), float(max(t1, t0)), GAP_SOURCE, reason))
