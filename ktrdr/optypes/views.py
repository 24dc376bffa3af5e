"""A result as the dashboard and the CLI show it, for a type that declares how (``OpType.view``).

The platform's own types have pages written for them (``coordinator.dashboard.charts``); any other
type gets one from its declaration: ``view(result, document) -> View``, from the record's result (as
the type's result model) and the document it stored, if any. A view is plain data the page draws
with no code of the type's own: key figures (cards, and the CLI's one-line summary), line or bar
charts over a numeric x, and tables. It is cut to what a page can take (:meth:`View.bounded`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from ktrdr.optypes.headlines import number

MAX_POINTS = 2_000
MAX_ROWS = 500
MAX_CHARTS = 8
MAX_TABLES = 8
MAX_FIGURES = 24

Scalar = float | int | str | bool | None


class Series(BaseModel):
    name: str
    values: list[float | None]


class Chart(BaseModel):
    """Series over one x axis: ``line`` (a curve) or ``bars`` (a histogram: x is each bar's centre)."""

    title: str
    x: list[float]
    series: list[Series]
    kind: Literal["line", "bars"] = "line"
    x_label: str = ""
    y_label: str = ""


class Table(BaseModel):
    title: str
    columns: list[str]
    rows: list[list[Scalar]]
    total: int | None = None  # rows before the view was cut (None: all are here)


class View(BaseModel):
    figures: dict[str, Scalar] = Field(default_factory=dict)
    charts: list[Chart] = Field(default_factory=list)
    tables: list[Table] = Field(default_factory=list)

    def line(self) -> str:
        """The figures on one line (``--follow``'s summary): ``p5 -3.20, median +1.10, paths 1,000``."""
        return ", ".join(f"{k} {_figure(v)}" for k, v in self.figures.items())

    def bounded(self) -> View:
        """At most ``MAX_POINTS`` points a chart (every n-th), ``MAX_ROWS`` rows a table, no NaN."""
        charts = []
        for chart in self.charts[:MAX_CHARTS]:
            step = max(1, math.ceil(len(chart.x) / MAX_POINTS))
            charts.append(chart.model_copy(update={
                "x": chart.x[::step],
                "series": [Series(name=s.name, values=[_finite(v) for v in s.values[::step]]) for s in chart.series]}))
        tables = [t.model_copy(update={"rows": [[_finite(c) for c in r] for r in t.rows[:MAX_ROWS]],
                                       "total": t.total if t.total is not None else (
                                           len(t.rows) if len(t.rows) > MAX_ROWS else None)})
                  for t in self.tables[:MAX_TABLES]]
        figures = {k: _finite(v) for k, v in list(self.figures.items())[:MAX_FIGURES]}
        return View(figures=figures, charts=charts, tables=tables)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _figure(value: Scalar) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return number(value, ",d") if isinstance(value, int) else number(value, ".4g")
