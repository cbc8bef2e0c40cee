"""What a valid value of each session column is, as SQL: the one definition the reader's checked
views and the summaries (``summaries.py``) share, so a summary equals what the reader shows."""

from __future__ import annotations

from profiler.session.schema import column_rule


def valid_sql(table: str, col: str) -> str | None:
    """SQL condition true for a valid value of ``col`` (None: every value is valid)."""
    kind, lo, hi = column_rule(table, col)
    c = f'"{col}"'
    if kind == "any":
        return None
    if kind == "text":
        return f"typeof({c}) IN ('text', 'integer', 'real')"
    if kind == "blob":
        return f"typeof({c}) = 'blob' AND length({c}) % 8 = 0"
    if kind == "hash":
        return f"typeof({c}) = 'integer'"
    # SQLite orders every number before any text or blob, and +Inf after every finite bound, so
    # one range test rejects text, blobs, ±Inf and out-of-range numbers alike.
    return f"{c} BETWEEN {lo!r} AND {hi!r}"


def view_column(table: str, col: str) -> str:
    """``col`` of ``table`` as a checked view column: the value, or NULL when it is impossible."""
    cond = valid_sql(table, col)
    c = f'"{col}"'
    if cond is None:
        return c
    value = f"CAST({c} AS TEXT)" if column_rule(table, col)[0] == "text" else c
    return f"CASE WHEN {cond} THEN {value} END AS {c}"
