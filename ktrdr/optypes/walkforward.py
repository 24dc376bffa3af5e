"""``walkforward``: walk-forward analysis, a parent operation built only on the other types.

The date range is cut into folds (``ktrdr.backtest.walkforward.make_folds``: rolling or anchored,
in-sample and out-of-sample lengths as bar counts or durations, or a fold count), fixed once from
the dataset's bars when the operation starts. Then, run by the coordinator's parent runner:

- **rule-based strategy**: stage 1 is a ``sweep`` of ``grid`` on every fold's in-sample bars
  (themselves parents: each one fans out its backtests); stage 2 backtests each fold's best
  variant, by ``metric``, on that fold's out-of-sample bars;
- **neuro-fuzzy strategy**: stage 1 is a ``training`` on every fold's in-sample bars (GPU first,
  like any training); stage 2 backtests each fold's model on its in-sample bars (for the
  efficiency) and on its out-of-sample bars.

Folds are independent, so each stage runs every fold at once across the fleet. A child sees only
its own window's bars (``start``/``end``), so no out-of-sample bar reaches its fold's selection or
training.

A position open at an out-of-sample window's end is, by ``close_at_end`` (the default), closed at
its last close paying the exit, or left open marked to market (the stitched curve never pays that
exit). With ``carry`` it is carried into the next fold instead: the out-of-sample backtests run in
fold order, each going on from where the last one ended (its equity as capital, its cash and open
position as ``carry_in``: ``subjects.params.CarryIn``), its own chosen strategy walking on from the
carried side from the bar before its window (one warm-up bar more for that): kept, the position is
one trade across the boundary with one entry and one exit paid; not wanted, it is closed at the
window's first open, paying the exit. Only the last fold follows ``close_at_end``. With the same
parameters in every fold, the stitched curve is then one continuous backtest over the windows.

The result: a per-fold table (chosen parameters or model, in- and out-of-sample metrics), the
out-of-sample curves joined into one compounded curve and its metrics, and the walk-forward
efficiency (mean out-of-sample annualised return over mean in-sample); the full document, curve
included, in the ``results`` store (``ktrdr backtest plot`` draws it with the fold boundaries).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.backtest.result import BacktestResult
from ktrdr.backtest.walkforward import (
    MAX_FOLDS,
    Fold,
    make_folds,
    parameter_stability,
    stitch,
    stitched_metrics,
    trade_statistics,
    walk_forward_efficiency,
)
from ktrdr.durations import parse_duration
from ktrdr.optypes.backtesting import BACKTEST, verify_bars
from ktrdr.optypes.defn import ON_COORDINATOR, OpType, Rejected, declare
from ktrdr.optypes.headlines import number, performance
from ktrdr.optypes.parent import Child, ChildState, Decision, Fail, ParentEnv, Ready, Reduced, Stage
from ktrdr.optypes.sweep import SWEEP, check_relations
from ktrdr.optypes.training import TRAINING
from subjects.models import OpStatus
from subjects.objective import Ranks
from subjects.params import MAX_WARMUP_BARS, BacktestParams, CarryIn, ParamValue, SweepParams
from subjects.results import Result
from subjects.training import TrainingParams

FORMAT = "ktrdr.walkforward.result/1"
Approach = Literal["grid", "training"]
# The metrics each fold's row keeps, beside the ranking metric (the full ones are in the children).
FOLD_METRICS = ("total_return_pct", "annualized_return_pct", "sharpe_ratio", "max_drawdown_pct", "trades", "bars")


class WalkForwardParams(BacktestParams, Ranks):
    """A backtest's fields (strategy, symbol, range, costs, sizing, shared ``parameters``) plus the
    folds and how each fold's in-sample part chooses. ``approach`` is filled by admission from the
    strategy: ``grid`` (rule-based, needs ``grid``) or ``training`` (neuro-fuzzy)."""

    mode: Literal["rolling", "anchored"] = "rolling"
    in_sample: int | str | None = Field(default=None, description="bars, or a duration: 180d, 26w, 12h")
    out_of_sample: int | str | None = Field(default=None, description="bars, or a duration")
    folds: int | None = Field(default=None, ge=1, le=MAX_FOLDS, description="instead of the lengths")
    ratio: float = Field(default=4.0, gt=0, le=100, description="in-sample:out-of-sample bars with folds")
    grid: dict[str, list[ParamValue]] | None = Field(default=None, description="rule-based: the sweep grid")
    warmup: bool = Field(default=True, description="give every window's backtests the bars before it that "
                                                   "their indicators need (false: each window starts cold)")
    epochs: int | None = Field(default=None, ge=1, le=100_000, description="neuro-fuzzy: training epochs")
    seed: int | None = Field(default=None, ge=0)
    carry: bool = Field(default=False, description="carry a position open at a fold's end into the next fold, "
                                                   "whose strategy keeps or closes it (folds then run in order); "
                                                   "only the last fold follows close_at_end")
    approach: Approach | None = None

    @field_validator("carry_in")
    @classmethod
    def _no_carry_in(cls, v: CarryIn | None) -> CarryIn | None:
        if v is not None:
            raise ValueError("a walk-forward starts flat from capital; its folds carry their own positions "
                             "(carry: true)")
        return v

    @field_validator("in_sample", "out_of_sample")
    @classmethod
    def _length(cls, v: int | str | None) -> int | str | None:
        if v is None:
            return v
        if isinstance(v, int):
            if v < 2:
                raise ValueError(f"{v} bars: a window needs at least 2")
            return v
        if parse_duration(v) <= timedelta(0):
            raise ValueError(f"invalid duration {v!r}: it must be longer than nothing")
        return v.strip().lower()

    @model_validator(mode="after")
    def _folds_or_lengths(self) -> WalkForwardParams:
        if self.model is not None:
            raise ValueError("model: a walk-forward trains its own model on each fold; leave it out")
        lengths = (self.in_sample is not None, self.out_of_sample is not None)
        if self.folds is None and lengths != (True, True):
            raise ValueError("give in_sample and out_of_sample (bars or durations), or folds")
        if self.folds is not None and any(lengths):
            raise ValueError("give either folds or in_sample and out_of_sample, not both")
        if self.grid is not None:
            SweepParams.model_validate({**self._backtest_fields(), "grid": self.grid})
        return self

    def _backtest_fields(self) -> dict[str, Any]:
        # Warm-up bars are the walk-forward's to set per window (``warmup``), not one number for all.
        return self.model_dump(mode="json", include=set(BacktestParams.model_fields) - {
            "model", "include_curves", "warmup_bars", "carry_in"})

    def backtest(self, *, start: str, end: str, **fields: Any) -> BacktestParams:
        return BacktestParams.model_validate({**self._backtest_fields(), "start": start, "end": end,
                                              "include_curves": True, **fields})


def parse_length(value: int | str) -> int | timedelta:
    """A window: bars (an int), or a duration (``ktrdr.durations``: 180d, 26w, 12h)."""
    return value if isinstance(value, int) else parse_duration(value)


class FoldRow(Result):
    fold: int
    in_start: str
    in_end: str
    out_start: str
    out_end: str
    chosen: dict[str, Any]  # the best grid variant's parameters, or {"model": "name@version"}
    in_sample: dict[str, Any]
    out_of_sample: dict[str, Any]
    # Bars before the out-of-sample window its backtest's indicators warmed up on (0: it started cold).
    warmup_bars: int = 0
    # With carry: the position its out-of-sample backtest started holding, from the fold before (None: flat).
    carried_in: dict[str, Any] | None = None


class WalkForwardResult(Result):
    approach: Approach
    metric: str
    objective: dict[str, Any] = Field(default_factory=dict)  # what chose each fold's variant
    folds: list[FoldRow]
    metrics: dict[str, Any]  # of the stitched out-of-sample curve
    efficiency: float | None
    # What happened at each fold's end to a position still open: closed at the last close, paying
    # its exit, left open (marked to market: the stitched curve never pays that exit), or carried
    # into the next fold (``carry``).
    fold_ends: str = ""
    carry: bool = False
    # Every out-of-sample trade of every fold together, and buy-and-hold over the same bars.
    trade_stats: dict[str, Any] = Field(default_factory=dict)
    buy_and_hold_return_pct: float | None = None
    # Per parameter: what the folds chose and how much they agreed (grid approach).
    stability: dict[str, dict[str, Any]] = Field(default_factory=dict)


def admit_walkforward(params: WalkForwardParams) -> WalkForwardParams:
    """The strategy must load (with every grid combination); its kind decides the approach."""
    from ktrdr.strategy import NeuroFuzzyStrategy, StrategyError, load_strategy

    try:
        check_strategy(params.strategy, params.parameters, params.grid)
        strategy = load_strategy(params.strategy)
    except RequestProblem as exc:
        raise Rejected(exc.field, exc.message) from None
    except StrategyError as exc:
        raise Rejected("strategy", str(exc)) from None
    if isinstance(strategy, NeuroFuzzyStrategy):
        if params.grid:
            raise Rejected("grid", f"{strategy.name} is neuro-fuzzy: each fold trains its model, there is "
                                   "no grid to sweep")
        return params.model_copy(update={"approach": "training"})
    if not params.grid:
        raise Rejected("grid", f"{strategy.name} is rule-based: give the grid each in-sample fold sweeps")
    check_relations(params.objective, params.grid, params.parameters)
    return params.model_copy(update={"approach": "grid"})


def _fold(d: Mapping[str, Any]) -> Fold:
    return Fold(index=int(d["index"]), **{k: datetime.fromisoformat(d[k])
                                          for k in ("in_start", "in_end", "out_start", "out_end")})


def _failure(c: ChildState, what: str) -> Fail:
    why = c.error or ("cancelled" if c.status is OpStatus.CANCELLED else c.status.value)
    return Fail(f"{what} {c.op_id} {c.status.value}: {why}")


class WalkForwardPlan:
    unit = "fold steps"

    async def prepare(self, params: WalkForwardParams, env: ParentEnv) -> dict[str, Any]:
        index = await env.bar_index(params.symbol, params.timeframe, params.start, params.end)
        if len(index) == 0:
            raise LookupError(f"no {params.symbol} {params.timeframe} bars in the data store between "
                              f"{params.start or 'the first'} and {params.end or 'the last'}")
        folds = make_folds(index, mode=params.mode,
                           in_sample=None if params.in_sample is None else parse_length(params.in_sample),
                           out_of_sample=None if params.out_of_sample is None else parse_length(params.out_of_sample),
                           folds=params.folds, ratio=params.ratio)
        # A model name per walk-forward: its folds' versions do not become the strategy's "latest".
        return {"folds": [f.to_dict() for f in folds], "bars": len(index), "model_name": f"wf-{env.op_id}"[:64],
                "warmup_bars": grid_warmup(params) if params.warmup else 0}

    def plan(self, params: WalkForwardParams, prepared: Mapping[str, Any],
             children: Mapping[str, ChildState]) -> Decision:
        folds = [_fold(f) for f in prepared["folds"]]
        per_fold = 3 if params.approach == "training" else 2
        total = per_fold * len(folds)
        selection = [self._select(params, prepared, f) for f in folds]
        pending = [c for c in selection if c.key not in children or not children[c.key].ended]
        if pending:
            return Stage(name=f"in-sample: {len(folds)} fold(s)", children=selection, total=total)
        for fold, child in zip(folds, selection, strict=True):
            if not children[child.key].completed:
                return _failure(children[child.key], f"fold {fold.index}: the in-sample {child.type.name}")
            outcome = children[child.key].result or {}
            if params.approach == "grid" and not outcome.get("best"):
                # Never the first variant, or the strategy's defaults, in its place.
                return Fail(f"fold {fold.index}: the in-sample sweep {children[child.key].op_id} chose nothing: "
                            f"{outcome.get('no_best') or 'no variant completed with a value to rank by'}")
        tests: list[Child] = []
        waiting: int | None = None  # with carry: the first fold whose last one has not completed
        for fold in folds:
            chosen = children[f"f{fold.index}is"]
            if params.approach == "training":
                tests.append(self._in_sample_test(params, fold, chosen))
            carried = None
            if params.carry and fold.index > 0:
                # In fold order: this fold goes on from where the last one ended.
                before = children.get(f"f{fold.index - 1}oos")
                if before is None or not before.completed:
                    waiting = fold.index if waiting is None else waiting
                    continue
                carried = (before.result or {}).get("carry_out")
                if not carried:
                    return Fail(f"fold {fold.index - 1}: the out-of-sample backtest {before.op_id} reported no "
                                "end state to carry into the next fold")
            tests.append(self._out_of_sample_test(params, fold, chosen, carried, last=fold.index == len(folds) - 1))
        for child in tests:
            state = children.get(child.key)
            if state is not None and state.ended and not state.completed:
                return _failure(state, "the backtest")
        if any(c.key not in children or not children[c.key].ended for c in tests):
            name = (f"out-of-sample: {len(folds)} fold(s)" if waiting is None else
                    f"out-of-sample, carried in fold order: {waiting} of {len(folds)} fold(s) started")
            return Stage(name=name, children=tests, total=total)
        assert waiting is None  # its predecessor is in tests: not ended, failed or completed
        return Ready()

    def _select(self, params: WalkForwardParams, prepared: Mapping[str, Any], fold: Fold) -> Child:
        start, end = fold.in_start.isoformat(), fold.in_end.isoformat()
        if params.approach == "training":
            training = TrainingParams(strategy=params.strategy, symbols=[params.symbol], start=fold.in_start,
                                      end=fold.in_end, model_name=prepared["model_name"], epochs=params.epochs,
                                      seed=params.seed)
            return Child(key=f"f{fold.index}is", type=TRAINING, params=training)
        sweep = SweepParams.model_validate({**params.backtest(start=start, end=end,
                                                              warmup_bars=prepared.get("warmup_bars", 0)
                                                              ).model_dump(mode="json"),
                                            "grid": params.grid, "objective": params.objective.model_dump(mode="json"),
                                            "top": 3, "full_results": 0,
                                            "include_curves": False})
        return Child(key=f"f{fold.index}is", type=SWEEP, params=sweep)

    def _in_sample_test(self, params: WalkForwardParams, fold: Fold, chosen: ChildState) -> Child:
        """Neuro-fuzzy: the fold's model on its own in-sample bars (for the efficiency)."""
        model = str((chosen.result or {}).get("model"))
        warm = warmup_of(params.strategy, params.parameters) if params.warmup else 0
        return Child(key=f"f{fold.index}isbt", type=BACKTEST,
                     params=params.backtest(start=fold.in_start.isoformat(), end=fold.in_end.isoformat(),
                                            model=model, warmup_bars=warm))

    def _out_of_sample_test(self, params: WalkForwardParams, fold: Fold, chosen: ChildState,
                            carried: Mapping[str, Any] | None, *, last: bool) -> Child:
        """The fold's choice on its out-of-sample bars; with carry, going on from ``carried`` (the
        fold before's ``carry_out``: none for the first fold) and closing at the end only if ``last``."""
        result = chosen.result or {}
        fields: dict[str, Any]
        if params.approach == "training":
            fields = {"model": str(result.get("model"))}
            warm = warmup_of(params.strategy, params.parameters) if params.warmup else 0
        else:
            best = (result.get("best") or {}).get("parameters") or {}
            fields = {"parameters": {**params.parameters, **best}}
            warm = warmup_of(params.strategy, fields["parameters"]) if params.warmup else 0
        if params.carry:
            fields["close_at_end"] = params.close_at_end and last
            if carried is not None:
                # One bar more: the strategy decides on the bar before the window whether to keep it.
                warm = min(warm + 1, MAX_WARMUP_BARS) if params.warmup else 0
                fields.update(capital=carried["capital"], carry_in=carried["carry_in"])
        return Child(key=f"f{fold.index}oos", type=BACKTEST,
                     params=params.backtest(start=fold.out_start.isoformat(), end=fold.out_end.isoformat(),
                                            warmup_bars=warm, **fields))

    async def reduce(self, params: WalkForwardParams, prepared: Mapping[str, Any],
                     children: Mapping[str, ChildState], env: ParentEnv) -> Reduced:
        folds = [_fold(f) for f in prepared["folds"]]
        rows: list[FoldRow] = []
        curves: list[tuple[np.ndarray, np.ndarray]] = []
        in_windows: list[tuple[float | None, int | None]] = []
        trades: list[dict[str, Any]] = []
        starts: list[float] = []
        hold = 1.0
        for fold in folds:
            chosen = children[f"f{fold.index}is"]
            oos = children[f"f{fold.index}oos"]
            if params.approach == "training":
                pick: dict[str, Any] = {"model": (chosen.result or {}).get("model")}
                in_metrics = (children[f"f{fold.index}isbt"].result or {}).get("metrics", {})
            else:
                pick = ((chosen.result or {}).get("best") or {}).get("parameters") or {}
                in_metrics = await _best_metrics(env, chosen.op_id)
            out_metrics = (oos.result or {}).get("metrics", {})
            document = await env.result(oos.op_id)
            if document is None:
                return Reduced(error=f"fold {fold.index}: the out-of-sample backtest {oos.op_id} stored no result")
            curve = BacktestResult.from_json_bytes(document)
            curves.append((curve.index_ns, curve.equity))
            starts.append(float(oos.params.get("capital", params.capital)))
            # A carried trade is in the fold where it closed, once: the fold before left it open.
            trades += [{"fold": fold.index, **trade} for trade in _trades(curve)]
            if len(curve.benchmark) and curve.benchmark[0] > 0:
                hold *= float(curve.benchmark[-1] / curve.benchmark[0])
            in_windows.append((in_metrics.get("total_return_pct"), in_metrics.get("bars")))
            keep = (params.metric, *FOLD_METRICS)
            rows.append(FoldRow(fold=fold.index, **{k: v for k, v in fold.to_dict().items() if k != "index"},
                                chosen=pick, in_sample={k: in_metrics.get(k) for k in keep},
                                out_of_sample={k: out_metrics.get(k) for k in keep},
                                warmup_bars=int((oos.result or {}).get("warmup_bars") or 0),
                                carried_in=(oos.params.get("carry_in") or {}).get("position")))
        # Carried folds started from the equity the fold before ended with: stitched as they are.
        index_ns, equity = stitch(curves, initial_capital=params.capital, starts=starts if params.carry else None)
        metrics = stitched_metrics(index_ns, equity, initial_capital=params.capital, timeframe=params.timeframe)
        assert params.approach is not None
        result = WalkForwardResult(approach=params.approach, metric=params.metric,
                                   objective=params.objective.model_dump(mode="json"), folds=rows,
                                   fold_ends=_fold_ends(params), carry=params.carry,
                                   trade_stats=trade_statistics([t["pnl"] for t in trades]),
                                   buy_and_hold_return_pct=100.0 * (hold - 1.0) if curves else None,
                                   stability=parameter_stability([r.chosen for r in rows])
                                   if params.approach == "grid" else {},
                                   metrics=_finite(metrics), efficiency=walk_forward_efficiency(
                                       in_windows, (metrics.get("total_return_pct"), metrics.get("bars"))))
        doc = {"format": FORMAT, "walkforward": env.op_id, "symbol": params.symbol, "timeframe": params.timeframe,
               "strategy": params.strategy if len(params.strategy) <= 200 else "(inline YAML)",
               **result.model_dump(mode="json"), "fold_windows": prepared["folds"], "trades": trades,
               "index_ns": index_ns.tolist(), "equity": equity.tolist()}
        return Reduced(result=result, document=json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(),
                       description=f"walk-forward {params.symbol} {params.timeframe}: {len(folds)} folds")


def _fold_ends(params: WalkForwardParams) -> str:
    closed, left = ("closed at {} last close, paying the exit",
                    "left open at {} end, marked to market: the stitched curve never pays {}")
    if not params.carry:
        return closed.format("each fold's") if params.close_at_end else left.format("each fold's", "those exits")
    return ("carried into the next fold, whose strategy keeps it (one trade, one entry and one exit paid) or "
            "closes it at its first open, paying the exit; the last fold's "
            + (closed.format("its") if params.close_at_end else left.format("its", "that exit")))


def _trades(result: BacktestResult) -> list[dict[str, Any]]:
    """A backtest's trades as rows, with their entry and exit times (``BacktestResult.trades_frame``'s)."""
    times = result.trades_frame()[["entry_time", "exit_time"]]
    return [{**{k: v[i].item() for k, v in result.trades.items()},
             "entry_time": entry.isoformat(), "exit_time": exit_.isoformat()}
            for i, (entry, exit_) in enumerate(times.itertuples(index=False))]


@functools.lru_cache(maxsize=256)
def _warmup(strategy: str, parameters: str) -> int:
    from ktrdr.strategy import load_strategy, with_parameters
    from ktrdr.strategy.warmup import warmup_bars

    overrides = json.loads(parameters)
    loaded = load_strategy(strategy)
    return warmup_bars(with_parameters(loaded, overrides) if overrides else loaded)


def warmup_of(strategy: str, parameters: Mapping[str, Any]) -> int:
    """The bars ``strategy`` with ``parameters`` needs before a window (``ktrdr.strategy.warmup``)."""
    return _warmup(strategy, json.dumps(dict(parameters), sort_keys=True))


def grid_warmup(params: WalkForwardParams) -> int:
    """The most any variant of the grid needs: every numeric parameter at its largest value (periods),
    and each variant's own need when that combination is not one the strategy accepts."""
    if not params.grid:
        return warmup_of(params.strategy, params.parameters)
    largest = {name: max(values) if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
               else values[0] for name, values in params.grid.items()}
    try:
        return warmup_of(params.strategy, {**params.parameters, **largest})
    except ValueError:
        from ktrdr.backtest.sweep import combinations

        needs = []
        for combination in combinations(params.grid):
            try:
                needs.append(warmup_of(params.strategy, {**params.parameters, **combination}))
            except ValueError:
                continue
        return max(needs, default=0)


async def _best_metrics(env: ParentEnv, sweep_id: str) -> dict[str, Any]:
    """The best variant's full metrics, from its sweep's ranking (the sweep's record keeps a few)."""
    data = await env.result(sweep_id)
    ranking = json.loads(data).get("ranking", []) if data else []
    return dict(ranking[0].get("metrics", {})) if ranking else {}


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN or infinity: an undefined ratio is null.
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else
                v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}


def headline(result: dict[str, Any]) -> str:
    """``3 folds out of sample: return -0.37 %, Sharpe -0.10, ...; efficiency 0.41; buy and hold +7.41 %``."""
    metrics = {**result["metrics"], "trades": (result.get("trade_stats") or {}).get("trades")}
    return (f"{len(result['folds'])} folds out of sample: {performance(metrics)}; "
            f"efficiency {number(result.get('efficiency'))}; "
            f"buy and hold {number(result.get('buy_and_hold_return_pct'), '+.2f', ' %')}")


WALKFORWARD = declare(OpType(
    name="walkforward", params=WalkForwardParams, result=WalkForwardResult, runs=ON_COORDINATOR,
    parent=WalkForwardPlan(), admit=admit_walkforward, verify=verify_bars, api="/api/v1/backtests/walkforward",
    summary="walk-forward analysis: choose on each in-sample fold (a sweep or a training), test out of sample",
    cli="ktrdr backtest walkforward", headline=headline))
