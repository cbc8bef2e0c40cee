"""Every session table has a record type whose fields are its columns, in order."""

from __future__ import annotations

from profiler.session.rows import ROW_TYPES, StepRow
from profiler.session.schema import TABLES


def test_every_table_but_meta_has_a_row_type_with_its_columns() -> None:
    assert set(ROW_TYPES) == set(TABLES) - {"meta"}
    for table, row_type in ROW_TYPES.items():
        assert row_type._fields == TABLES[table], table


def test_a_row_is_the_tuple_sqlite_gets() -> None:
    row = StepRow(engine_id=1, t_unix_s=2.0, running=3, waiting=0, kv_usage_frac=0.5,
                  prefix_queries_tokens=10, prefix_hits_tokens=4,
                  preempted_prefix_queries_tokens=None, preempted_prefix_hits_tokens=None,
                  preemptions=0, prompt_tokens=7, generation_tokens=8, finished=1, scraped=0)
    assert tuple(row)[:3] == (1, 2.0, 3) and len(row) == len(TABLES["steps"])
