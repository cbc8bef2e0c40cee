"""Sessions that leave kvscope: Parquet tables, a Perfetto trace, a single-file HTML report.

``kvscope export SESSION --format parquet|perfetto|html --out PATH``. Every exporter reads the
session through the checked reader (``profiler.session.reader``): a value the reader finds
impossible leaves as NULL, exactly as the report and the dashboard see it.
"""

from __future__ import annotations

FORMATS = ("parquet", "perfetto", "html")
"""The ``--format`` choices, in help order."""
