"""Block evaluation: many parameter variants of one rule-based strategy on one bars frame.

Each variant's metrics are exactly, bit for bit, those of ``run_backtest(bars, with_parameters(strategy,
params), config)``: the block runs the same steps on the same inputs (``ktrdr.backtest.engine`` shares
them), and does once per block what depends on the bars alone: the timeframe and its annualisation,
the price arrays, and each distinct indicator (an :class:`IndicatorCache`). Parameter values are
validated once per distinct indicator spec rather than per variant (see :class:`Variants`), and a
parameter set that repeats is evaluated once. Variants that differ only in their indicators get
their signals and positions together, ``ROWS_TOGETHER`` at a time, from rows x bars operands
(:class:`_RowSignals`), and their indicators are kept for the next block on the same data
(``IndicatorCache(shared=True)``, keyed by a digest of the bars). Variants are then simulated together, a batch at a
time (``ktrdr.backtest.batch``: the same float operations, done for many variants per numpy call),
their curves reduced together (``ktrdr.backtest.metrics.curve_columns``) and their metrics worked out
as columns, a batch at a time (``ktrdr.backtest.metrics.metrics_of_rows``). A variant the
batch cannot vouch for (``Batch.unsure``: a run that meets a NaN, an infinity or a zero price) is
backtested alone, as before. What the block leaves out is what the metrics do not need: curves,
the benchmark and the trade list of every variant.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from ktrdr.backtest.batch import Changes, changes_of, changes_of_rows, simulate_batch
from ktrdr.backtest.config import BacktestConfig
from ktrdr.backtest.engine import _basis, _metrics, _prices, _rule_positions, _timeframe
from ktrdr.backtest.metrics import CurveColumns, curve_columns, metrics_of_rows
from ktrdr.backtest.result import _clean
from ktrdr.backtest.simulator import simulate
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.data.timeframes import periods_per_year
from ktrdr.strategy import RuleStrategy, StrategyError, with_parameters
from ktrdr.strategy.conditions import evaluate_rows
from ktrdr.strategy.schema import IndicatorSpec
from ktrdr.strategy.signals import (
    IndicatorCache,
    operand_resolver,
    operand_values,
    position_changes_rows,
    spec_key,
)
from subjects.params import ParamValue

FORMAT = "ktrdr.backtest.block/1"

MetricValue = float | int | str | None  # a cleaned metric: NaN and infinities are None

# Variants are simulated in batches (ktrdr.backtest.batch) of at most BATCH_ROWS variants and
# BATCH_CHANGES position changes (~210 bytes each at the batch's peak: ~55 MB), and their equity
# curves are made and reduced CURVE_CELLS cells (variants x bars) at a time (2 MB per float array,
# ~20 MB in all; twice that was three times slower, each array a fresh mapping), so a block stays
# under ~80 MB whatever its size. A batch step costs the same for few variants as for many: batches
# are as large as that allows (a sweep's 1,250-variant SMA block is one).
BATCH_ROWS = 2048
# Variants whose signals and positions are worked out together (rows x bars arrays of each operand:
# 64 x 8,760 bars is 4.5 MB a float array, small enough to stay in cache).
ROWS_TOGETHER = 64
BATCH_CHANGES = 1 << 18
CURVE_CELLS = 1 << 18


@dataclass(kw_only=True)
class BlockResult:
    """Columnar: ``values[name][i]`` and ``metrics[metric][i]`` belong to variant ``i``.

    ``values[name][i]`` is the value variant ``i`` ran with (base included), None where neither the
    variant nor the base set that parameter (the strategy's own value applied). ``metrics[m][i]`` is
    None where variant ``i`` failed (its message is ``errors[i]``) or where the metric is undefined.
    """

    strategy: str
    bars: int
    variants: int
    names: list[str]
    values: dict[str, list[ParamValue | None]]
    metrics: dict[str, list[MetricValue]]
    errors: dict[int, str]

    def variant_metrics(self, i: int) -> dict[str, MetricValue] | None:
        """Variant ``i``'s metrics as a single backtest's JSON has them; None when it failed."""
        if not 0 <= i < self.variants:
            raise IndexError(f"variant {i} of a block of {self.variants}")
        if i in self.errors:
            return None
        return {name: column[i] for name, column in self.metrics.items()}

    def to_json_bytes(self) -> bytes:
        doc = {"format": FORMAT, "strategy": self.strategy, "bars": self.bars, "variants": self.variants,
               "names": self.names, "values": self.values, "metrics": self.metrics,
               "errors": {str(i): message for i, message in sorted(self.errors.items())}}
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> BlockResult:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a block result (format {doc.get('format')!r})")
        return cls(strategy=doc["strategy"], bars=doc["bars"], variants=doc["variants"], names=doc["names"],
                   values=doc["values"], metrics=doc["metrics"],
                   errors={int(i): message for i, message in doc["errors"].items()})


def run_block(bars: pd.DataFrame, strategy: RuleStrategy, variants: Sequence[Mapping[str, ParamValue]],
              config: BacktestConfig, *, base: Mapping[str, ParamValue] | None = None,
              cancel: CancelToken | None = None,
              progress: Callable[[int, int], None] | None = None, trade_from: int = 0,
              shared_indicators: bool = True) -> BlockResult:
    """Backtest ``strategy`` with each of ``variants`` (parameters ``{**base, **variant}``) on ``bars``.

    A variant the strategy refuses, or whose backtest raises, is recorded in ``errors`` and the block
    goes on. Bars that no variant could be backtested on (none, no open or close column) raise at
    once. ``cancel`` is checked between variants and inside each; ``progress(done, total)`` is called
    for every variant, in order, once its metrics are known (a batch of variants at a time), so a
    caller that reports somewhere costly throttles it. ``trade_from``: the bars before it only warm
    the indicators up, as in :func:`ktrdr.backtest.engine.run_backtest`. ``shared_indicators``: keep
    the indicators in this process for the next block on the same data (``IndicatorCache(shared=True)``).
    """
    if not isinstance(strategy, RuleStrategy):
        raise TypeError(f"a block evaluates a rule-based strategy, not {type(strategy).__name__}")
    if len(bars) == 0:
        raise ValueError("no bars to backtest")
    if not 0 <= trade_from < len(bars):
        raise ValueError(f"trade_from {trade_from} is not one of the {len(bars)} bars")
    variants = list(variants)
    base_params = dict(base or {})
    timeframe = _timeframe(pd.DatetimeIndex(bars.index[trade_from:]), config)
    ppy = periods_per_year(timeframe)
    open_, close = _prices(bars.iloc[trade_from:])
    cache = IndicatorCache(bars, shared=shared_indicators)
    make = Variants(strategy)

    def changes(params: dict[str, ParamValue]) -> Changes | str:
        """The variant's position changes, or why it has none (a refusal, an error)."""
        try:
            variant = make(params)
        except StrategyError as exc:
            return str(exc)
        except Exception as exc:  # one variant's failure is that variant's result
            return f"{type(exc).__name__}: {exc}"
        try:
            return changes_of(_rule_positions(variant, bars, cancel=cancel, cache=cache)[trade_from:])
        except OperationCancelled:
            raise
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def alone(params: dict[str, ParamValue]) -> dict[str, Any] | str:
        """The variant backtested on its own, as ``run_backtest`` would: for what a batch cannot vouch for."""
        try:
            wanted = _rule_positions(make(params), bars, cancel=cancel, cache=cache)[trade_from:]
            sim = simulate(open_, close, wanted, config, cancel=cancel)
            return _clean(_metrics(sim, config=config, close=close, timeframe=timeframe, ppy=ppy))
        except OperationCancelled:
            raise
        except StrategyError as exc:
            return str(exc)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def run(pending: list[tuple[int, Changes]]) -> None:
        """Simulate a batch of variants together and fill in their outcomes."""
        batch = simulate_batch(open_, close, [c for _, c in pending], config, cancel=cancel)
        per = max(1, CURVE_CELLS // len(close))
        cells = min(per, len(pending)) * (len(close) - 1)
        scratch = (np.empty(cells), np.empty(cells))  # the work arrays of every chunk of the batch
        parts = []
        for lo in range(0, len(pending), per):
            if cancel is not None:
                cancel.raise_if_cancelled()
            equity, exposed = batch.equity(lo, min(lo + per, len(pending)))
            parts.append(curve_columns(equity, exposed, scratch=scratch))
        columns, failed = metrics_of_rows(
            CurveColumns.concat(parts), pnl=batch.trades["pnl"], bars_held=batch.trades["bars_held"],
            trade_starts=batch.trade_starts, initial_capital=config.initial_capital, close=close,
            periods_per_year=ppy, annualization_basis=_basis(timeframe, ppy))
        columns["skipped_entries"] = batch.skipped.tolist()  # as _metrics_of adds it
        unsure = batch.unsure.tolist()
        keep = [i for i in range(len(pending)) if not unsure[i] and i not in failed]
        outcomes.put_rows([pending[i][0] for i in keep], columns, keep)
        for i, message in failed.items():  # as in run_backtest: e.g. an annualised return that overflows
            if not unsure[i]:
                outcomes.fail(pending[i][0], message)
        for i in np.flatnonzero(batch.unsure).tolist():
            outcomes.put(pending[i][0], alone(unique[pending[i][0]]))

    names, rows, unique, which = _distinct(variants, base_params)
    total = len(variants)
    outcomes = _Outcomes(len(unique))
    reported = 0

    def report(known: int) -> None:
        """Progress for every variant, in order, whose unique parameter set is among the first ``known``."""
        nonlocal reported
        while reported < total and which[reported] < known:
            if cancel is not None:
                cancel.raise_if_cancelled()
            reported += 1
            if progress is not None:
                progress(reported, total)

    rows_of = _RowSignals(strategy, bars, cache, cancel=cancel)

    def chunk_changes(lo: int, hi: int) -> list[Changes | str]:
        """Unique variants ``lo:hi``'s changes: those made by indicator changes alone together
        (:class:`_RowSignals`), any other (and all of them, if that fails) one by one."""
        specs = [make.specs(unique[u]) for u in range(lo, hi)]
        together = [i for i, s in enumerate(specs) if s is not None]
        got: list[Changes | str | None] = [None] * (hi - lo)
        if len(together) > 1:
            try:
                for i, c in zip(together, rows_of.changes([specs[i] for i in together], trade_from),  # type: ignore[misc]
                                strict=True):
                    got[i] = c
            except OperationCancelled:
                raise
            except Exception:  # noqa: BLE001 - each variant alone says what is wrong with it
                got = [None] * (hi - lo)
        return [c if c is not None else changes(unique[lo + i]) for i, c in enumerate(got)]

    pending: list[tuple[int, Changes]] = []
    held = 0
    made: list[Changes | str] = []
    for u in range(len(unique)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if u % ROWS_TOGETHER == 0:
            made = chunk_changes(u, min(u + ROWS_TOGETHER, len(unique)))
        got = made[u % ROWS_TOGETHER]
        if isinstance(got, str):
            outcomes.fail(u, got)
        else:
            pending.append((u, got))
            held += len(got.bars)
        if len(pending) >= BATCH_ROWS or held >= BATCH_CHANGES:
            run(pending)
            pending, held = [], 0
            report(u + 1)
    if pending:
        run(pending)
    report(len(unique))

    errors = outcomes.errors
    if which == list(range(len(unique))):  # no parameter set repeats: the variants' columns are these
        metrics = outcomes.columns
    else:
        metrics = {m: [column[u] for u in which] for m, column in outcomes.columns.items()}
    return BlockResult(
        strategy=strategy.name, bars=len(bars) - trade_from, variants=total, names=names,
        values={name: [row.get(name) for row in rows] for name in names}, metrics=metrics,
        errors={i: errors[u] for i, u in enumerate(which) if u in errors})


class _Outcomes:
    """What each distinct parameter set came to: its metrics (a column per metric, a value per set;
    None where the set has no such metric) or why it has none (``errors``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.columns: dict[str, list[MetricValue]] = {}
        self.errors: dict[int, str] = {}

    def _column(self, name: str) -> list[MetricValue]:
        column = self.columns.get(name)
        if column is None:
            column = self.columns[name] = [None] * self.count
        return column

    def fail(self, u: int, message: str) -> None:
        self.errors[u] = message

    def put(self, u: int, outcome: dict[str, Any] | str) -> None:
        """Set ``u``'s outcome: its metrics, or an error message."""
        if isinstance(outcome, str):
            self.fail(u, outcome)
            return
        for name, value in outcome.items():
            self._column(name)[u] = value

    def put_rows(self, us: list[int], columns: Mapping[str, list[MetricValue]], rows: list[int]) -> None:
        """Set sets ``us``' metrics: set ``us[k]``'s is ``columns[m][rows[k]]``."""
        if not us:
            return
        whole = rows == list(range(len(next(iter(columns.values()), []))))
        follow = us == list(range(us[0], us[0] + len(us)))
        for name, values in columns.items():
            column = self._column(name)
            picked = values if whole else [values[i] for i in rows]
            if follow:
                column[us[0]:us[0] + len(us)] = picked
            else:
                for u, value in zip(us, picked, strict=True):
                    column[u] = value


def _distinct(variants: Sequence[Mapping[str, ParamValue]], base: Mapping[str, ParamValue]) -> tuple[
        list[str], list[dict[str, ParamValue]], list[dict[str, ParamValue]], list[int]]:
    """The names the variants set, in order; each variant's parameters (``{**base, **variant}``); the
    distinct parameter sets; and for each variant, the index of its own among them. Equal parameter
    sets give equal results: a repeated one is evaluated once."""
    names: list[str] = []
    rows: list[dict[str, ParamValue]] = []
    unique: list[dict[str, ParamValue]] = []
    which: list[int] = []
    first_of: dict[Hashable, int] = {}
    for variant in variants:
        names.extend(name for name in variant if name not in names)
        params = {**base, **variant}
        rows.append(params)
        key = _params_key(params)
        if key is None or key not in first_of:
            if key is not None:
                first_of[key] = len(unique)
            unique.append(params)
        which.append(first_of[key] if key is not None else len(unique) - 1)
    return names, rows, unique, which


def _params_key(params: Mapping[str, ParamValue]) -> Hashable | None:
    # Order stays in: a name and the dotted path it stands for may both be set, and the last one wins.
    # Types too: 5, 5.0 and True are equal in Python but not to a strategy's validation.
    key = tuple((name, type(value).__qualname__, value) for name, value in params.items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


class Variants:
    """``with_parameters(strategy, params)`` for many ``params``, cheaply where that is provably the same.

    ``with_parameters`` deep-copies the document and re-validates all of it. When every parameter
    sets a leaf of an indicator (``indicators.<id>.<key>``), only those indicators can change: the
    rules, the other indicators and the strategy-level checks (indicator ids, parameter paths) are
    those the strategy already passed. Each changed indicator is then validated alone, once per
    distinct spec, and the strategy is copied with them. Anything else, and any refusal (for its
    exact message), goes through ``with_parameters`` itself.
    """

    def __init__(self, strategy: RuleStrategy) -> None:
        self._strategy = strategy
        # Only a strategy that came through parse_strategy has passed its cross-checks and keeps the
        # document with_parameters edits.
        indicators = strategy.document.get("indicators") if strategy.document else None
        self._cheap = isinstance(indicators, Mapping)
        self._documented: Mapping[str, Any] = indicators if isinstance(indicators, Mapping) else {}
        self._specs: dict[Hashable, IndicatorSpec | None] = {}
        self._leaves: dict[str, tuple[str, str] | None] = {}
        self._made: dict[Hashable, dict[str, Any] | None] = {}
        self._base_specs: dict[str, dict[str, Any]] | None = None

    def __call__(self, params: Mapping[str, ParamValue]) -> RuleStrategy:
        changes = self._indicator_changes(params)
        if changes is None:
            return self._slow(params)
        indicators = dict(self._strategy.indicators)
        for ident, fields in changes.items():
            spec = self.validated({**self._documented[ident], **fields})
            if spec is None:
                return self._slow(params)
            indicators[ident] = spec
        return self._strategy.model_copy(update={"indicators": indicators})

    def specs(self, params: Mapping[str, ParamValue]) -> dict[str, dict[str, Any]] | None:
        """``make(params).indicator_specs()`` where the cheap path makes the variant (every parameter
        an indicator's leaf, every changed indicator valid), else None. Equal specs are the same dicts."""
        changes = self._indicator_changes(params)
        if changes is None:
            return None
        if self._base_specs is None:
            self._base_specs = self._strategy.indicator_specs()
        out = dict(self._base_specs)
        for ident, fields in changes.items():
            key = (ident, tuple((k, type(v).__qualname__, v) for k, v in fields.items()))
            try:
                spec = self._made[key]
            except KeyError:
                validated = self.validated({**self._documented[ident], **fields})
                spec = self._made[key] = None if validated is None else validated.spec()
            except TypeError:  # a value that does not hash
                return None
            if spec is None:
                return None
            out[ident] = spec
        return out

    def _slow(self, params: Mapping[str, ParamValue]) -> RuleStrategy:
        variant = with_parameters(self._strategy, params)
        if not isinstance(variant, RuleStrategy):  # a rule strategy stays one: its document has rules
            raise StrategyError(variant.source, [("", "parameters made the strategy neuro-fuzzy")])
        return variant

    def leaf_of(self, name: str) -> tuple[str, str] | None:
        """``(indicator id, key)`` when parameter ``name`` sets a leaf of one of the strategy's
        indicators that the cheap path may set, else None."""
        if name in self._leaves:
            return self._leaves[name]
        found: tuple[str, str] | None = None
        if self._cheap:
            declared = self._strategy.parameters
            path = declared[name].path if name in declared else name
            parts = path.split(".")
            node = self._documented.get(parts[1]) if len(parts) == 3 and parts[0] == "indicators" else None
            # A mapping replaced by a value could drop a path another parameter names: the full
            # check decides that.
            if isinstance(node, dict) and not isinstance(node.get(parts[2]), dict):
                found = (parts[1], parts[2])
        self._leaves[name] = found
        return found

    def documented(self, ident: str) -> Mapping[str, Any]:
        """Indicator ``ident`` as the strategy's document has it (before any parameter)."""
        return self._documented[ident]

    def _indicator_changes(self, params: Mapping[str, ParamValue]) -> dict[str, dict[str, Any]] | None:
        """``{indicator id: {key: value}}`` when every parameter sets an indicator's leaf, else None."""
        if not self._cheap:
            return None
        changes: dict[str, dict[str, Any]] = {}
        for name, value in params.items():
            found = self.leaf_of(name)
            if found is None:
                return None
            changes.setdefault(found[0], {})[found[1]] = value
        return changes

    def validated(self, spec: dict[str, Any]) -> IndicatorSpec | None:
        """The indicator as the strategy's validation would build it; None when it is refused.

        A spec's validation depends on the spec alone, so it is kept for this process (the next
        block of a sweep asks for the same specs again): up to ``_VALIDATED_KEPT`` of them."""
        key = spec_key(spec)
        if key is not None and key in self._specs:
            return self._specs[key]
        if key is not None and key in _VALIDATED:
            validated = _VALIDATED[key]
        else:
            try:
                validated = IndicatorSpec.model_validate(spec)
            except ValidationError:
                validated = None
            if key is not None:
                if len(_VALIDATED) >= _VALIDATED_KEPT:
                    _VALIDATED.clear()
                _VALIDATED[key] = validated
        if key is not None:
            self._specs[key] = validated
        return validated


# Indicator specs validated in this process (see Variants.validated); never edited once made.
_VALIDATED: dict[Hashable, IndicatorSpec | None] = {}
_VALIDATED_KEPT = 65_536


class _RowSignals:
    """Many variants' position changes at once, for variants that differ only in their indicators'
    specs: the rules are the strategy's own, evaluated on rows x bars operands
    (:func:`ktrdr.strategy.conditions.evaluate_rows`), the positions walked for every row together
    (:func:`ktrdr.strategy.signals.position_changes_rows`). Row ``i``'s changes are those
    ``changes_of(_rule_positions(variant_i, bars)[trade_from:])`` gives: the same indicators (one
    cache), the same comparisons of the same floats, the same walk. Raises where any variant's would
    (the block then runs them one by one, for each one's own error)."""

    def __init__(self, strategy: RuleStrategy, bars: pd.DataFrame, cache: IndicatorCache, *,
                 cancel: CancelToken | None) -> None:
        self._strategy = strategy
        self._bars = bars
        self._cache = cache
        self._cancel = cancel
        self._computed_by_id: dict[int, pd.Series | pd.DataFrame] = {}  # id of a spec dict -> its indicator
        self._values: dict[tuple[int, str], np.ndarray] = {}  # (id of a spec dict, column) -> its values
        self._specs: list[dict[str, Any]] = []  # keeps those spec dicts (and so their ids) alive

    def changes(self, specs: Sequence[dict[str, dict[str, Any]]], trade_from: int) -> list[Changes]:
        rows, n = len(specs), len(self._bars)
        for variant in specs:  # every indicator, as compute_indicators computes them (and raises)
            if self._cancel is not None:
                self._cancel.raise_if_cancelled()
            for spec in variant.values():
                self._computed(spec)
        memo: dict[tuple[Any, Any], np.ndarray] = {}

        def indicator(ident: str, column: str) -> np.ndarray | None:
            if ident not in specs[0]:
                return None
            # One row per variant, or one row for all when every variant has the same indicator.
            per = [self._array(ident, variant[ident], column) for variant in specs]
            return per[0] if all(a is per[0] for a in per) else np.stack(per)

        resolve = operand_resolver(self._bars, indicator)

        def rule(name: str) -> np.ndarray | None:
            cond = getattr(self._strategy.rules, name)
            if cond is None:
                return None
            return np.ascontiguousarray(np.broadcast_to(evaluate_rows(cond, resolve, (rows, n), memo), (rows, n)))

        short = self._strategy.allow_short
        signals = (rule("entry_long"), rule("exit_long"), rule("entry_short") if short else None,
                   rule("exit_short") if short else None)
        if all(s is None for s in signals):
            return [changes_of(np.zeros(n - trade_from, dtype=np.int8)) for _ in range(rows)]
        return changes_of_rows(position_changes_rows(*signals), trade_from)

    def _computed(self, spec: dict[str, Any]) -> pd.Series | pd.DataFrame:
        found = self._computed_by_id.get(id(spec))
        if found is None:
            found = self._computed_by_id[id(spec)] = self._cache.get(spec)
            self._specs.append(spec)
        return found

    def _array(self, ident: str, spec: dict[str, Any], column: str) -> np.ndarray:
        """The indicator's values as a rule reads ``ident.column``."""
        key = (id(spec), column)
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = operand_values(self._computed(spec), ident, column)
        return found
