"""One Parquet file per session table (pyarrow), streamed in row batches.

Column types follow the session schema (``schema.TABLES`` and the SQLite column types): INTEGER
columns are int64, REAL float64, TEXT string, ``block_hashes`` binary; NULL stays null. Values the
reader found impossible for their column are null here too (the checked views are read).
``meta`` leaves as ``key``/``value`` strings (the value is the stored JSON text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from profiler.errors import UserError
from profiler.session.reader import Session
from profiler.session.schema import TABLES, column_type

BATCH_ROWS = 100_000
"""Rows read and written per batch: memory stays bounded on a 10M-step session."""


@dataclass(frozen=True)
class ParquetTable:
    """One written file."""

    table: str
    path: Path
    rows: int


def arrow_type(table: str, column: str) -> pa.DataType:
    """The Arrow type of a session column (from its SQLite type)."""
    if table == "meta":
        return pa.string()
    kind = column_type(column).split()[0]
    return {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.string(),
            "BLOB": pa.binary()}[kind]


def schema_of(table: str) -> pa.Schema:
    """The Arrow schema of ``table``'s Parquet file."""
    return pa.schema([pa.field(c, arrow_type(table, c)) for c in TABLES[table]])


def export_parquet(session: Session, out_dir: Path) -> list[ParquetTable]:
    """Write ``out_dir/<table>.parquet`` for every table of the schema (optional tables a session
    lacks are written empty, with their columns). Returns what was written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder (Parquet export writes one file "
                        "per table into a folder)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table, cols in TABLES.items():
        schema = schema_of(table)
        path = out_dir / f"{table}.parquet"
        rows = 0
        cur = session.db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid"
                                 if table != "meta" else "SELECT key, value FROM meta ORDER BY key")
        with pq.ParquetWriter(path, schema, compression="zstd") as w:
            while True:
                batch = cur.fetchmany(BATCH_ROWS)
                if not batch:
                    break
                columns = list(zip(*batch, strict=True))
                arrays = [_array(values, f.type) for values, f in zip(columns, schema, strict=True)]
                w.write_table(pa.Table.from_arrays(arrays, schema=schema))
                rows += len(batch)
        written.append(ParquetTable(table, path, rows))
    return written


def _array(values: tuple[object, ...], typ: pa.DataType) -> pa.Array:
    """An Arrow array of one column of a batch; a value the type cannot hold becomes null (the
    checked views only let through values valid for the column, so this is a last guard)."""
    try:
        return pa.array(values, type=typ, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        clean = []
        for v in values:
            try:
                pa.array([v], type=typ)
                clean.append(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                clean.append(None)
        return pa.array(clean, type=typ)
