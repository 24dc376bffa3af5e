"""An operation's results as a researcher works with them: series and tables as pandas objects.

Each type reads what the op's record says (``Operation.result``: the small summary) and, where there
is one, the full document the op stored (a backtest's curve and trades, a sweep's whole ranking, a
walk-forward's stitched curve, a training's history). Built only from those two, they are the same
whether they come through :class:`~ktrdr.client.Client` or :class:`~ktrdr.client.AsyncClient`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from subjects.models import Operation


@dataclass(frozen=True, eq=False)
class OpResults:
    """Any op's results: its final record, its summary and the document it stored (or None)."""

    op: Operation
    document: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def op_id(self) -> str:
        return self.op.op_id

    @property
    def summary(self) -> dict[str, Any]:
        """The small result the op's record keeps (``Operation.result``)."""
        return dict(self.op.result or {})

    @property
    def metrics(self) -> pd.Series:
        """The op's headline metrics by name (a backtest's, a walk-forward's stitched curve's, a
        training's); empty where the type has none."""
        found = (self.document or {}).get("metrics") or self.summary.get("metrics") or {}
        return pd.Series(dict(found), name=self.op_id, dtype=object)

    def _require(self) -> dict[str, Any]:
        if self.document is None:
            raise LookupError(f"{self.op_id} stored no full result to read this from")
        return self.document

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.op_id} {self.op.status.value}>"


@dataclass(frozen=True, eq=False, repr=False)
class BacktestResults(OpResults):
    """A backtest: ``metrics``, ``equity``, ``drawdown``, ``benchmark`` (buy and hold) and ``trades``."""


    @cached_property
    def _result(self) -> Any:
        from ktrdr.backtest.result import BacktestResult

        return BacktestResult.from_doc(self._require())

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self._result.parameters)

    @property
    def equity(self) -> pd.Series:
        """Equity at every bar's close, indexed by bar time (UTC)."""
        return self._result.equity_curve

    @property
    def drawdown(self) -> pd.Series:
        """Drawdown from the running peak of equity, in % (≤ 0)."""
        return self._result.drawdown_pct

    @property
    def benchmark(self) -> pd.Series:
        """Buy and hold over the same bars, from the same capital."""
        result = self._result
        return pd.Series(result.benchmark, index=result.index, name="buy_and_hold")

    @property
    def trades(self) -> pd.DataFrame:
        """One row per closed trade, with its entry and exit times."""
        return self._result.trades_frame()

    @property
    def open_position(self) -> dict[str, Any] | None:
        """The position left open at the end (``close_at_end=False``), else None."""
        return self._result.open_position


@dataclass(frozen=True, eq=False, repr=False)
class SweepResults(OpResults):
    """A sweep: the whole ``ranking`` (a row per variant: rank, its parameters, the objective's metric,
    its neighbourhood score, the rest of its metrics), the ``best`` variant and ``heatmap(x, y)``."""


    @property
    def objective(self) -> dict[str, Any]:
        return dict(self.summary.get("objective") or (self.document or {}).get("objective") or {})

    @property
    def metric(self) -> str:
        return str(self.summary.get("metric") or (self.document or {}).get("metric"))

    @property
    def grid(self) -> dict[str, list[Any]]:
        return dict(self._require().get("grid") or {})

    @property
    def best(self) -> dict[str, Any] | None:
        """The best variant that met the objective (rank, parameters, metrics), or None (``no_best`` says why)."""
        return self.summary.get("best")

    @property
    def no_best(self) -> str | None:
        return self.summary.get("no_best")

    @cached_property
    def ranking(self) -> pd.DataFrame:
        """Every completed variant, best first, indexed by rank; ``eligible`` False (and ``excluded``
        saying why) for those that missed the objective."""
        entries = self._require().get("ranking") or []
        params = list(self.grid)
        rows = []
        for entry in entries:
            metrics = entry.get("metrics") or {}
            row: dict[str, Any] = {"rank": entry.get("rank")}
            row.update({name: (entry.get("parameters") or {}).get(name) for name in params})
            row[self.metric] = metrics.get(self.metric)
            row.update({"neighbourhood": entry.get("neighbourhood"), "neighbours": entry.get("neighbours"),
                        "eligible": entry.get("eligible", True), "excluded": entry.get("excluded")})
            row.update({k: v for k, v in metrics.items() if k != self.metric and not isinstance(v, dict | list)})
            row["op_id"] = entry.get("op_id")
            rows.append(row)
        frame = pd.DataFrame(rows)
        return frame.set_index("rank") if not frame.empty else frame

    @property
    def failed(self) -> pd.DataFrame:
        """The variants that failed, with their error."""
        return pd.DataFrame(self._require().get("failed") or [])

    def heatmap(self, x: str | None = None, y: str | None = None) -> pd.DataFrame:
        """The objective's metric over two parameters (default: the grid's first two): rows ``y``'s
        values, columns ``x``'s; with more parameters each cell is the best variant over the others."""
        from ktrdr.backtest.sweep import heatmap

        doc = self._require()
        grid = self.grid
        names = list(grid)
        x = x or (names[0] if names else "")
        y = y or (names[1] if len(names) > 1 else "")
        xs, ys, cells = heatmap(doc.get("ranking") or [], grid, self.metric, x=x, y=y,
                                descending=bool(doc.get("descending", True)))
        frame = pd.DataFrame(cells, index=pd.Index(ys, name=y), columns=pd.Index(xs, name=x), dtype=float)
        frame.attrs["metric"] = self.metric
        return frame


@dataclass(frozen=True, eq=False, repr=False)
class WalkForwardResults(OpResults):
    """A walk-forward: ``folds`` (windows, what each in-sample fold chose, in- and out-of-sample
    metrics), the stitched out-of-sample ``equity``, ``trades`` across folds, ``stability`` of the
    chosen parameters, ``efficiency`` and ``buy_and_hold_return_pct``."""


    @property
    def folds(self) -> pd.DataFrame:
        rows = []
        for fold in self.summary.get("folds") or []:
            row = {k: v for k, v in fold.items() if k not in ("chosen", "in_sample", "out_of_sample")}
            row.update({f"chosen.{k}": v for k, v in (fold.get("chosen") or {}).items()})
            row.update({f"is.{k}": v for k, v in (fold.get("in_sample") or {}).items()})
            row.update({f"oos.{k}": v for k, v in (fold.get("out_of_sample") or {}).items()})
            rows.append(row)
        frame = pd.DataFrame(rows)
        for column in ("in_start", "in_end", "out_start", "out_end"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame.set_index("fold") if "fold" in frame else frame

    @property
    def equity(self) -> pd.Series:
        """The folds' out-of-sample curves joined, each re-investing the last one's ending equity."""
        doc = self._require()
        index = pd.DatetimeIndex(pd.to_datetime(doc.get("index_ns") or [], utc=True), name="timestamp")
        return pd.Series(doc.get("equity") or [], index=index, name="equity", dtype=float)

    @property
    def trades(self) -> pd.DataFrame:
        """Every out-of-sample trade, with the fold it belongs to."""
        frame = pd.DataFrame(self._require().get("trades") or [])
        for column in ("entry_time", "exit_time"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    @property
    def stability(self) -> pd.DataFrame:
        """Per parameter: how the folds' choices spread (values chosen, how often the commonest was)."""
        return pd.DataFrame.from_dict(self.summary.get("stability") or {}, orient="index")

    @property
    def efficiency(self) -> float | None:
        return self.summary.get("efficiency")

    @property
    def buy_and_hold_return_pct(self) -> float | None:
        return self.summary.get("buy_and_hold_return_pct")


@dataclass(frozen=True, eq=False, repr=False)
class TrainingResults(OpResults):
    """A training: the ``model`` it stored (``name@version``), its ``metrics`` and the per-epoch ``history``."""


    @property
    def model(self) -> str | None:
        return self.summary.get("model")

    @property
    def history(self) -> pd.DataFrame:
        """One row per epoch (train and validation loss and accuracy, learning rate, duration)."""
        frame = pd.DataFrame(self._require().get("history") or [])
        return frame.set_index("epoch") if "epoch" in frame else frame


def _by_type() -> dict[str, type[OpResults]]:
    from ktrdr.optypes.backtesting import BACKTEST
    from ktrdr.optypes.sweep import SWEEP
    from ktrdr.optypes.training import TRAINING
    from ktrdr.optypes.walkforward import WALKFORWARD

    return {BACKTEST.name: BacktestResults, SWEEP.name: SweepResults, WALKFORWARD.name: WalkForwardResults,
            TRAINING.name: TrainingResults}


def results_of(op: Operation, document: bytes | Mapping[str, Any] | None) -> OpResults:
    """``op``'s results as the class for its type (``OpResults`` for a type with none of its own)."""
    parsed = json.loads(document) if isinstance(document, bytes | bytearray) else (
        dict(document) if document is not None else None)
    return _by_type().get(op.type, OpResults)(op=op, document=parsed)


def ops_frame(ops: list[Operation]) -> pd.DataFrame:
    """Op records as rows, indexed by op id: when, where and how each ran, and its headline numbers."""
    rows = []
    for op in ops:
        result = op.result or {}
        metrics = m if isinstance(m := result.get("metrics"), dict) else {}
        rows.append({
            "op_id": op.op_id, "type": op.type, "status": op.status.value, "created_at": op.created_at,
            "started_at": op.started_at, "completed_at": op.completed_at, "duration_s": op.duration_s,
            "progress_pct": op.progress.percentage if op.progress else None, "worker_id": op.worker_id,
            "attempt": op.attempt, "parent_id": op.parent_id, "error": op.error,
            "strategy": op.params.get("strategy") if isinstance(op.params.get("strategy"), str)
            and "\n" not in op.params["strategy"] else None,
            "symbol": op.params.get("symbol"),
            "total_return_pct": metrics.get("total_return_pct"), "sharpe_ratio": metrics.get("sharpe_ratio")})
    frame = pd.DataFrame(rows, columns=["op_id", "type", "status", "created_at", "started_at", "completed_at",
                                        "duration_s", "progress_pct", "worker_id", "attempt", "parent_id", "error",
                                        "strategy", "symbol", "total_return_pct", "sharpe_ratio"])
    for column in ("created_at", "started_at", "completed_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.set_index("op_id")
