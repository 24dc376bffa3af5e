"""What "best" means when variants are compared: an objective, as data, checked at admission.

One type serves sweeps, walk-forward (each fold's sweep), a sweep's blocks and every ranking: a
metric a backtest reports, which way is better, and the constraints a variant must meet to be
chosen at all: a minimum number of trades (a variant that never trades has a flat curve, which
return- and drawdown-based metrics would otherwise call best), a maximum drawdown, and relations
between parameters (``fast < slow``). A variant that misses one is ranked after every one that
meets them all, with the reason, and is never "best"; when none meets them, there is no best and
the result says why, instead of calling the first grid point best.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Direction = Literal["max", "min"]

# Every metric a backtest reports that can rank variants (ktrdr.backtest.metrics), and which way
# is better. What is left out does not depend on the variant (the buy-and-hold return, the bars,
# the capital) or is a label.
METRICS: Final[dict[str, Direction]] = {
    "sharpe_ratio": "max",
    "sortino_ratio": "max",
    "calmar_ratio": "max",
    "total_return_pct": "max",
    "total_return": "max",
    "annualized_return_pct": "max",
    "final_equity": "max",
    "recovery_factor": "max",
    "profit_factor": "max",
    "win_rate": "max",
    "trades": "max",
    "winning_trades": "max",
    "losing_trades": "min",
    "avg_win": "max",
    "avg_loss": "max",  # a loss is negative: closer to zero is better
    "largest_win": "max",
    "largest_loss": "max",
    "max_drawdown_pct": "min",
    "max_drawdown": "min",
    "volatility_pct": "min",
    "avg_bars_held": "min",
    "exposure": "max",
}
DEFAULT_METRIC: Final = "sharpe_ratio"
MAX_RELATIONS: Final = 16

_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_RELATION = re.compile(rf"^\s*({_NAME})\s*(<=|>=|==|!=|<|>)\s*({_NAME}|-?\d+(?:\.\d+)?)\s*$")


def unknown_metric(name: str) -> str:
    return f"unknown metric {name!r}; choose one of: {', '.join(sorted(METRICS))}"


class Relation(BaseModel):
    """``left op right``: a parameter against another parameter or a number."""

    model_config = ConfigDict(frozen=True)

    left: str
    op: str
    right: str | float

    @classmethod
    def parse(cls, text: str) -> Relation:
        found = _RELATION.match(text) if isinstance(text, str) and len(text) <= 200 else None
        if found is None:
            raise ValueError(f"invalid relation {str(text)[:200]!r}: write 'name < other' or 'name >= 10' "
                             f"(one of {' '.join(_COMPARE)})")
        left, op, right = found.groups()
        return cls(left=left, op=op, right=right if right[0].isalpha() or right[0] == "_" else float(right))

    def names(self) -> set[str]:
        return {self.left} | ({self.right} if isinstance(self.right, str) else set())

    def holds(self, parameters: Mapping[str, Any]) -> bool | None:
        """Whether it holds for ``parameters``; None when one side is missing or not comparable."""
        left = parameters.get(self.left)
        right = parameters.get(self.right) if isinstance(self.right, str) else self.right
        if left is None or right is None:
            return None
        try:
            return bool(_COMPARE[self.op](left, right))
        except TypeError:
            return None

    def __str__(self) -> str:
        right = self.right if isinstance(self.right, str) else f"{self.right:g}"
        return f"{self.left} {self.op} {right}"


class Objective(BaseModel):
    """Which variant is best: ``metric`` in ``direction`` (by default the metric's own), among the
    variants that meet every constraint."""

    model_config = ConfigDict(extra="forbid")

    metric: str = DEFAULT_METRIC
    direction: Direction | None = Field(default=None, description="max or min; none: the metric's own")
    min_trades: int = Field(default=1, ge=0, le=1_000_000,
                            description="fewer trades and a variant is never best (0: a variant that never "
                                        "trades may be)")
    max_drawdown_pct: float | None = Field(default=None, gt=0, le=100,
                                           description="a deeper drawdown and a variant is never best")
    require: list[str] = Field(default_factory=list, max_length=MAX_RELATIONS,
                               description="parameter relations a variant must meet: 'fast < slow'")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(unknown_metric(v))
        return v

    @field_validator("require")
    @classmethod
    def _relations(cls, v: list[str]) -> list[str]:
        return [str(Relation.parse(text)) for text in v]

    @model_validator(mode="after")
    def _filled(self) -> Objective:
        if self.direction is None:
            self.direction = METRICS[self.metric]
        return self

    @property
    def descending(self) -> bool:
        return self.direction == "max"

    @property
    def relations(self) -> list[Relation]:
        return [Relation.parse(text) for text in self.require]

    def parameter_names(self) -> set[str]:
        """The parameters the relations name (admission checks the grid has them)."""
        return {name for r in self.relations for name in r.names()}

    def describe(self) -> str:
        parts = [f"{self.metric} ({self.direction})"]
        if self.min_trades:
            parts.append(f"at least {self.min_trades} trade{'s' if self.min_trades != 1 else ''}")
        if self.max_drawdown_pct is not None:
            parts.append(f"drawdown at most {self.max_drawdown_pct:g} %")
        parts += self.require
        return ", ".join(parts)

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        return _number(metrics.get(self.metric))

    def metrics_read(self) -> tuple[str, ...]:
        """The metrics of a variant that :meth:`excluded` and :meth:`value` read."""
        return (self.metric, "trades", "max_drawdown_pct")

    def excluded(self, metrics: Mapping[str, Any], parameters: Mapping[str, Any], *,
                 relations: Sequence[Relation] | None = None) -> str | None:
        """Why a variant cannot be best, or None when it meets the objective. ``relations``: this
        objective's, parsed once by a caller that asks for many variants."""
        return self._why(metrics.get("trades"), metrics.get("max_drawdown_pct"), metrics.get(self.metric),
                         lambda _: parameters, 0, self.relations if relations is None else relations)

    def _why(self, trades: Any, drawdown: Any, value: Any, parameters: Callable[[int], Mapping[str, Any]], row: int,
             relations: Sequence[Relation]) -> str | None:
        if self.min_trades and isinstance(trades, int | float) and trades < self.min_trades:
            return f"fewer than {self.min_trades} trade{'s' if self.min_trades != 1 else ''} ({int(trades)})"
        if (self.max_drawdown_pct is not None and isinstance(drawdown, int | float)
                and drawdown > self.max_drawdown_pct):
            return f"drawdown deeper than {self.max_drawdown_pct:g} % ({drawdown:.2f} %)"
        if relations:
            given = parameters(row)  # only asked for when there is a relation: a dict per variant costs
            for relation in relations:
                holds = relation.holds(given)
                if holds is not True:
                    return f"{relation} {'is not comparable' if holds is None else 'does not hold'}"
        if _number(value) is None:
            return f"no value for {self.metric}"
        return None

    def rank(self, entries: Iterable[Mapping[str, Any]], *, base: Mapping[str, Any] | None = None,
             metrics_key: str = "metrics", parameters_key: str = "parameters") -> list[dict[str, Any]]:
        """``entries`` best first: those that meet the objective by its metric (ties in their order),
        then the others in their order, each marked ``eligible`` (and why not, ``excluded``).
        ``base``: parameters every entry shares, under its own."""
        listed = list(entries)
        metrics = [e.get(metrics_key) or {} for e in listed]
        columns = {name: [m.get(name) for m in metrics] for name in self.metrics_read()}
        order, why = self.order(columns, range(len(listed)), parameters=lambda i: {
            **(base or {}), **(listed[i].get(parameters_key) or {})})
        return [{**listed[i], "eligible": True} if i not in why else
                {**listed[i], "eligible": False, "excluded": why[i]} for i in order]

    def order(self, columns: Mapping[str, Sequence[Any]], rows: Iterable[int], *,
              parameters: Callable[[int], Mapping[str, Any]]) -> tuple[list[int], dict[int, str]]:
        """Variants given as columns (``columns[metric][row]``, for at least the metrics
        :meth:`metrics_read` names; a missing column reads as None), as :meth:`rank` orders them:
        ``rows`` best first (those that meet the objective by its metric, ties in the order given,
        then the others in the order given), and why each of those others is not eligible.
        ``parameters(row)``: the row's parameters, base included (asked only where a relation needs
        them). A sweep of 10,000 variants is ranked without a dict per variant."""
        relations = self.relations  # parsed once, not once per row
        nothing: list[Any] = []
        metric, trades, drawdown = (columns.get(name, nothing) for name in self.metrics_read())
        rows = list(rows)
        raw = [metric[row] for row in rows] if metric else [None] * len(rows)
        isfinite = math.isfinite
        # A finite float is its own number: _number is asked only for anything else.
        values = [v if type(v) is float and isfinite(v) else _number(v) for v in raw]
        why: dict[int, str] = {}
        suspects: Sequence[int]
        if relations:
            suspects = range(len(rows))
        else:
            # Only a row that may fail a constraint is asked why (_why has the last word): one whose
            # trades are not an int of at least min_trades, drawdown not a float within the limit,
            # or metric not a number.
            least = self.min_trades
            deepest = math.inf if self.max_drawdown_pct is None else self.max_drawdown_pct
            counts = [trades[row] for row in rows] if trades and least else None
            falls = [drawdown[row] for row in rows] if drawdown and self.max_drawdown_pct is not None else None
            suspects = [i for i, value in enumerate(values) if value is None
                        or (least and (counts is None or type(counts[i]) is not int or counts[i] < least))
                        or (falls is not None and (type(falls[i]) is not float or falls[i] > deepest))]
        for i in suspects:
            row = rows[i]
            reason = self._why(trades[row] if trades else None, drawdown[row] if drawdown else None, raw[i],
                               parameters, row, relations)
            if reason is not None:
                why[row] = reason
        met = [position for position, row in enumerate(rows) if row not in why] if why else list(range(len(rows)))
        # A stable sort keeps ties in the order given, reversed or not.
        met.sort(key=cast("list[float]", values).__getitem__, reverse=self.descending)  # met: numbers only
        return [rows[position] for position in met] + [row for row in rows if row in why], why


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def summarise_exclusions(ranked: Iterable[Mapping[str, Any]], limit: int = 3) -> str:
    """Why none met the objective: the most common reasons, counted."""
    counts: dict[str, int] = {}
    for entry in ranked:
        # "fewer than 5 trades (0)" and "fewer than 5 trades (3)" count as one reason.
        key = re.sub(r" \([^)]*\)$", "", str(entry.get("excluded") or "no value"))
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n} with {why}" for why, n in top)


class Ranks(BaseModel):
    """The ``objective`` field of the operations that rank variants (sweeps, their blocks,
    walk-forward). ``metric`` and ``descending``, what they took before objectives, still read as
    the objective's metric and direction."""

    objective: Objective = Field(default_factory=Objective, description="what makes a variant best")

    @model_validator(mode="before")
    @classmethod
    def _from_metric(cls, data: Any) -> Any:
        if not isinstance(data, dict) or ("metric" not in data and "descending" not in data):
            return data
        data = dict(data)
        objective = data.get("objective")
        fields = (objective.model_dump() if isinstance(objective, Objective)
                  else dict(objective) if isinstance(objective, dict) else {})
        metric, descending = data.pop("metric", None), data.pop("descending", None)
        if metric is not None:
            fields["metric"] = metric
        if descending is not None:
            fields["direction"] = "max" if descending else "min"
        data["objective"] = fields
        return data

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def ranks_descending(self) -> bool:
        return self.objective.descending
