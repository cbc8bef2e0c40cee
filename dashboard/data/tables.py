"""Tables as shown: a value that was not measured reads "n/a", never None/NaN/<NA>.

Streamlit's grid draws a missing value as "None". ``shown`` drops the columns that hold nothing
(``attrs["not_measured"]`` lists them, for a caption) and turns a column with some missing values
into text with "n/a" in them (numbers keep their own formatting, ``formats`` per column).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from profiler.units import NOT_MEASURED, finite_or_none


def _text(fmt: Callable[[Any], str] | None) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        v = finite_or_none(v)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return NOT_MEASURED
        return fmt(v) if fmt is not None else (f"{v:,.6g}" if isinstance(v, float) else str(v))
    return f


def shown(df: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None,
          keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """``df`` ready for ``st.dataframe``/``st.table`` without a bare None, NaN or <NA>.

    Columns in ``keep`` stay even when empty (as "n/a"); whole-number float columns become integers.
    """
    formats = formats or {}
    out = pd.DataFrame(index=df.index)
    dropped = []
    for c in df.columns:
        col = df[c]
        missing = col.isna()
        if missing.all() and len(col) and c not in keep:
            dropped.append(str(c))
            continue
        if c in formats:
            out[c] = col.map(_text(formats[c]))
        elif missing.any():
            out[c] = col.map(_text(None))
        elif pd.api.types.is_float_dtype(col) and len(col) and (col == col.round()).all() and col.abs().max() < 2**53:
            out[c] = col.astype("int64")
        else:
            out[c] = col
    out.attrs["not_measured"] = dropped
    return out.reset_index(drop=True)
