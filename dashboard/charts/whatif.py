"""The what-if chart: predicted prefix hit rate against KV cache size, the session's point marked."""

from __future__ import annotations

import altair as alt
import pandas as pd

from profiler.analysis.whatif import WhatIf


def curve_frame(w: WhatIf, max_blocks: int | None = None) -> pd.DataFrame:
    """Curve samples: ``num_blocks``, ``tokens``, ``hit_rate`` (predicted)."""
    top = max_blocks or max(int(max(w.curve.blocks_for(1.0) or 2, w.actual.num_blocks or 2) * 1.5), 8)
    rows = [{"num_blocks": n, "tokens": n * w.curve.block_size, "hit_rate": rate}
            for n, rate in w.curve.points(top)]
    return pd.DataFrame(rows, columns=["num_blocks", "tokens", "hit_rate"])


def marks_frame(w: WhatIf) -> pd.DataFrame:
    """The session's real size with its measured and predicted hit rates (empty if unknown)."""
    a = w.actual
    rows = []
    if a.num_blocks:
        if a.hit_rate is not None:
            rows.append({"num_blocks": a.num_blocks, "hit_rate": a.hit_rate, "kind": "measured"})
        predicted = w.curve.hit_rate(a.num_blocks)
        if predicted is not None:
            rows.append({"num_blocks": a.num_blocks, "hit_rate": predicted, "kind": "model"})
    return pd.DataFrame(rows, columns=["num_blocks", "hit_rate", "kind"])


def whatif_chart(w: WhatIf, max_blocks: int | None = None) -> alt.LayerChart:
    """Step line of the miss-ratio curve (as hit rate), a rule at the real size, its points."""
    curve = curve_frame(w, max_blocks)
    x = alt.X("num_blocks:Q", title=f"KV cache size (blocks of {w.curve.block_size} tokens)")
    y = alt.Y("hit_rate:Q", title="prefix-cache hit rate", axis=alt.Axis(format="%"),
              scale=alt.Scale(domain=[0, 1]))
    line = alt.Chart(curve).mark_line(interpolate="step-after").encode(x=x, y=y)
    # the readout on each step's point: a line's tooltip would be its first point's wherever hovered
    steps = alt.Chart(curve).mark_circle(size=16).encode(
        x=x, y=y,
        tooltip=[alt.Tooltip("num_blocks:Q", title="blocks"), alt.Tooltip("tokens:Q", format=","),
                 alt.Tooltip("hit_rate:Q", title="predicted", format=".1%")],
    )
    layers: list[alt.Chart] = [line, steps]
    marks = marks_frame(w)
    if not marks.empty:
        rule = alt.Chart(marks.head(1)).mark_rule(strokeDash=[4, 4], color="gray").encode(x="num_blocks:Q")
        points = alt.Chart(marks).mark_point(size=90, filled=True).encode(
            x="num_blocks:Q", y="hit_rate:Q",
            color=alt.Color("kind:N", title="this session",
                            scale=alt.Scale(domain=["measured", "model"], range=["#d62728", "#1f77b4"])),
            tooltip=[alt.Tooltip("kind:N"), alt.Tooltip("num_blocks:Q", title="blocks"),
                     alt.Tooltip("hit_rate:Q", format=".1%")],
        )
        layers += [rule, points]
    if w.curve.max_hit_rate is not None:
        best = pd.DataFrame({"hit_rate": [w.curve.max_hit_rate]})
        layers.append(alt.Chart(best).mark_rule(strokeDash=[2, 2], color="green").encode(y="hit_rate:Q"))
    return alt.layer(*layers).properties(height=360)
