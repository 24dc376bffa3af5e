"""``ktrdr backtest``: run a backtest or a parameter sweep on the worker fleet, show and plot results.

Requests are checked here first (params, and that the strategy loads with every override), so a
typo is an error before anything is queued. A strategy given as a file is sent inline: workers on
other machines do not have the file.
"""

from __future__ import annotations

import json as jsonlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from ktrdr.cli.common import (
    TIMEFRAME_HELP,
    JsonOpt,
    OpIdArg,
    SweepIdArg,
    WideOpt,
    checked,
    run_client,
    submit_and_maybe_follow,
)
from ktrdr.cli.render import Col, FitTable, console, fail, kv_line, timestamp
from ktrdr.client.aio import AsyncClient
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.sweep import SWEEP
from subjects.models import Operation, OpStatus
from subjects.objective import DEFAULT_METRIC, METRICS
from subjects.params import BacktestParams, SweepParams

backtest_app = typer.Typer(
    help="Backtests on the backtest workers: run, sweep, walkforward, variant, show, compare, heatmap, plot.\n\n"
         "Example: ktrdr backtest run sma_crossover -s SYN --set fast=10 --follow", no_args_is_help=True)

StrategyArg = Annotated[str, typer.Argument(metavar="STRATEGY", help="A packaged name, a name in the strategies "
                                            "directory, or a YAML file (`ktrdr strategies list`).")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")]
SymbolOpt = Annotated[str, typer.Option("--symbol", "-s", metavar="SYMBOL", help="Whose stored bars: a symbol as "
                                        "`ktrdr data list` shows it, e.g. SYN or EURUSD.")]
TimeframeOpt = Annotated[str, typer.Option("--timeframe", "-t", metavar="TIMEFRAME", help=TIMEFRAME_HELP)]
StartOpt = Annotated[str | None, typer.Option(metavar="DATE", help="First bar (UTC): a date or date and time, e.g. "
                                              "2020-01-01 or 2020-01-01T09:30 (default: the first stored).")]
EndOpt = Annotated[str | None, typer.Option(metavar="DATE", help="Last bar (UTC), as --start (default: the last "
                                            "stored).")]
CapitalOpt = Annotated[float, typer.Option(metavar="AMOUNT", help="Starting cash, in the prices' currency.")]
CommissionOpt = Annotated[float, typer.Option(metavar="FRACTION", help="Commission on each fill, a fraction of the "
                                              "traded value: 0.001 = 0.1 %.")]
SlippageOpt = Annotated[float, typer.Option(metavar="FRACTION", help="Slippage on each fill, a fraction of the "
                                            "price paid against you: 0.0005 = 0.05 %.")]
SizingOpt = Annotated[str, typer.Option(metavar="MODE", help="How much each entry buys: fraction (--fraction of "
                                        "the equity) or all_cash.")]
FractionOpt = Annotated[float, typer.Option(metavar="FRACTION", help="With --sizing fraction: the share of equity "
                                            "each entry uses, above 0 up to 1 (0.25 = a quarter).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="Override a strategy "
                                                  "parameter (repeatable); its parameters: `ktrdr strategies show "
                                                  "STRATEGY`.")]
# The objective: one option set for every command that chooses among variants (subjects.objective).
MetricOpt = Annotated[str, typer.Option(metavar="METRIC", help="What ranks variants: "
                                        + ", ".join(sorted(METRICS)) + ".")]
DirectionOpt = Annotated[str | None, typer.Option(metavar="DIRECTION", help="max or min (default: the metric's "
                                                  "own; drawdowns min).")]
MinTradesOpt = Annotated[int, typer.Option("--min-trades", min=0, metavar="N", help="A variant with fewer trades "
                                           "is never best (0: one that never trades may be).")]
MaxDrawdownOpt = Annotated[float | None, typer.Option("--max-drawdown", metavar="PERCENT", help="A variant whose "
                                                      "maximum drawdown is deeper than this many % (e.g. 20) is "
                                                      "never best.")]
CloseAtEndOpt = Annotated[bool, typer.Option("--close-at-end/--no-close-at-end", help="Close a position still "
                                             "open after a window's last bar at its close (a trade, paying the "
                                             "exit), or leave it open, marked to market.")]
WarmupBarsOpt = Annotated[int, typer.Option("--warmup-bars", min=0, metavar="N", help="Bars before --start that "
                                           "only warm the indicators up (no trades, no equity).")]
RequireOpt = Annotated[list[str] | None, typer.Option("--require", metavar="RELATION", help="A relation every "
                                                      "chosen variant meets: 'fast < slow', 'fast >= 5' "
                                                      "(repeatable).")]
GRID_SPEC = "name=start:stop:step (inclusive) or name=a,b,c"


def _objective(metric: str, direction: str | None, min_trades: int, max_drawdown: float | None,
               require: list[str] | None) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, "min_trades": min_trades,
            "max_drawdown_pct": max_drawdown, "require": require or []}


def _overrides(specs: list[str] | None) -> dict[str, Any]:
    from ktrdr.backtest.sweep import parse_values

    out: dict[str, Any] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep:
            raise ValueError(f"--set: {spec!r} must look like name=value")
        out[name.strip()] = parse_values(value)[0]
    return out


def _submit(op_type: str, params: BaseModel, *, follow_it: bool, json: bool) -> Operation:
    op = submit_and_maybe_follow(op_type, params.model_dump(mode="json"), follow_it=follow_it, json=json)
    if not json and op.status is OpStatus.COMPLETED:
        console.print(f"details: ktrdr backtest show {op.op_id}")
    return op


@backtest_app.command("run")
def run(
    strategy: StrategyArg,
    symbol: SymbolOpt,
    timeframe: TimeframeOpt = "1h",
    start: StartOpt = None,
    end: EndOpt = None,
    capital: CapitalOpt = 100_000.0,
    commission: CommissionOpt = 0.001,
    slippage: SlippageOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    overrides: SetOpt = None,
    model: Annotated[str | None, typer.Option(metavar="MODEL", help="Neuro-fuzzy: the model as name or "
                                                                    "name@version (default: the latest version of "
                                                                    "the strategy's name; the result names it).")
                     ] = None,
    close_at_end: CloseAtEndOpt = True,
    warmup_bars: WarmupBarsOpt = 0,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest a strategy on stored bars (the data must be in the 'data' bucket: ktrdr data ...).

    Example: ktrdr backtest run sma_crossover -s SYN --set fast=10 --follow"""
    try:
        parameters = _overrides(overrides)
    except ValueError as exc:
        fail(f"invalid {exc}")
    params = checked(BACKTEST.name, dict(
        strategy=strategy, symbol=symbol, timeframe=timeframe, start=start, end=end,
        capital=capital, commission=commission, slippage=slippage, sizing=sizing, fraction=fraction,
        parameters=parameters, model=model, close_at_end=close_at_end, warmup_bars=warmup_bars))
    _submit(BACKTEST.name, params, follow_it=follow_it, json=json)


@backtest_app.command("sweep")
def sweep(
    strategy: StrategyArg,
    param: Annotated[list[str], typer.Option("--param", "-p", metavar="SPEC", help=f"A parameter's values: {GRID_SPEC} "
                                             "(repeatable: the grid is every combination).")],
    symbol: SymbolOpt,
    timeframe: TimeframeOpt = "1h",
    start: StartOpt = None,
    end: EndOpt = None,
    metric: MetricOpt = DEFAULT_METRIC,
    direction: DirectionOpt = None,
    min_trades: MinTradesOpt = 1,
    max_drawdown: MaxDrawdownOpt = None,
    require: RequireOpt = None,
    warmup_bars: WarmupBarsOpt = 0,
    close_at_end: CloseAtEndOpt = True,
    overrides: SetOpt = None,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="Best variants kept in the op result.")] = 10,
    full: Annotated[int, typer.Option(min=0, max=100, metavar="N", help="Best variants backtested again in full "
                                                                        "(equity curve and trades).")] = 1,
    block_size: Annotated[int | None, typer.Option(min=1, metavar="N", help="Variants per worker job (default: a "
                                                                            "few blocks per live worker slot).")
                          ] = None,
    capital: CapitalOpt = 100_000.0,
    commission: CommissionOpt = 0.001,
    slippage: SlippageOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest every combination of the parameter grid across the workers and rank them.

    Example: ktrdr backtest sweep sma_crossover -s SYN -p fast=5:20:5 -p slow=30,50 --require 'fast < slow' -f"""
    from ktrdr.backtest.sweep import parse_grid

    try:
        grid = parse_grid(param)
    except ValueError as exc:
        fail(f"invalid --param: {exc}")
    try:
        parameters = _overrides(overrides)
    except ValueError as exc:
        fail(f"invalid {exc}")
    params = checked(SWEEP.name, dict(
        strategy=strategy, symbol=symbol, timeframe=timeframe, start=start, end=end,
        capital=capital, commission=commission, slippage=slippage, sizing=sizing, fraction=fraction,
        grid=grid, objective=_objective(metric, direction, min_trades, max_drawdown, require), top=top,
        full_results=full, block_size=block_size, warmup_bars=warmup_bars, close_at_end=close_at_end,
        parameters=parameters))
    op = _submit(SWEEP.name, params, follow_it=follow_it, json=json)
    if follow_it and not json and op.result:
        console.print(_top_table(op.result))


@backtest_app.command("walkforward")
def walkforward(
    strategy: StrategyArg,
    symbol: SymbolOpt,
    timeframe: TimeframeOpt = "1h",
    start: StartOpt = None,
    end: EndOpt = None,
    in_sample: Annotated[str | None, typer.Option(metavar="LENGTH", help="In-sample length: bars (2000) or a "
                                                                         "duration (180d, 26w).")] = None,
    out_of_sample: Annotated[str | None, typer.Option(metavar="LENGTH", help="Out-of-sample length: bars or a "
                                                                             "duration.")] = None,
    folds: Annotated[int | None, typer.Option(min=1, metavar="N", help="Fold count, instead of the lengths.")] = None,
    ratio: Annotated[float, typer.Option(metavar="RATIO", help="With --folds: in-sample bars per out-of-sample "
                                                               "bar.")] = 4.0,
    anchored: Annotated[bool, typer.Option("--anchored", help="In-sample windows all start at the first bar "
                                                              "(default: rolling).")] = False,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="SPEC", help=f"Rule-based: the grid each in-sample fold sweeps, {GRID_SPEC} "
                                              "(repeatable).")] = None,
    metric: MetricOpt = DEFAULT_METRIC,
    direction: DirectionOpt = None,
    min_trades: MinTradesOpt = 1,
    max_drawdown: MaxDrawdownOpt = None,
    require: RequireOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, metavar="N", help="Neuro-fuzzy: training epochs per "
                                                                        "fold.")] = None,
    close_at_end: CloseAtEndOpt = True,
    carry: Annotated[bool, typer.Option("--carry", help="Carry a position open at a fold's end into the next "
                                        "fold, whose strategy keeps it (one trade) or closes it at its first open; "
                                        "the folds then run in order and only the last follows "
                                        "--close-at-end.")] = False,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="Give each window's backtests the bars "
                                         "before it that their indicators need (the default), or start each "
                                         "window cold.")] = True,
    capital: CapitalOpt = 100_000.0,
    commission: CommissionOpt = 0.001,
    slippage: SlippageOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    overrides: SetOpt = None,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Walk-forward analysis: choose in sample, test out of sample, fold after fold.

    On each in-sample fold it chooses (a sweep of --param, or a training for a neuro-fuzzy
    strategy), backtests the choice on the next out-of-sample fold, and joins those curves.

    Example: ktrdr backtest walkforward sma_crossover -s SYN --folds 4 -p fast=5:20:5 -p slow=30,50 -f"""
    from ktrdr.backtest.sweep import parse_grid
    from ktrdr.optypes.walkforward import WALKFORWARD

    def length(text: str | None) -> int | str | None:
        return int(text) if text is not None and text.strip().isdigit() else text

    try:
        grid = parse_grid(param) if param else None
        parameters = _overrides(overrides)
    except ValueError as exc:
        fail(f"invalid {exc}")
    params = checked(WALKFORWARD.name, dict(
        strategy=strategy, symbol=symbol, timeframe=timeframe, start=start, end=end,
        in_sample=length(in_sample), out_of_sample=length(out_of_sample), folds=folds, ratio=ratio,
        mode="anchored" if anchored else "rolling", grid=grid,
        objective=_objective(metric, direction, min_trades, max_drawdown, require), epochs=epochs, warmup=warmup,
        close_at_end=close_at_end, carry=carry, capital=capital,
        commission=commission, slippage=slippage, sizing=sizing, fraction=fraction, parameters=parameters))
    op = _submit(WALKFORWARD.name, params, follow_it=follow_it, json=json)
    if follow_it and not json and op.result:
        console.print(_folds_table(op.result, wide_option=None))
        console.print(_walkforward_summary(op.result))


@backtest_app.command("variant")
def variant(
    sweep_id: SweepIdArg,
    rank: Annotated[int, typer.Option(min=1, metavar="N", help="The variant's rank in the sweep's ranking.")] = 1,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest one of a sweep's variants again in full (equity curve and trades), by its rank.

    Example: ktrdr backtest variant sweep-6b5fedf4d926 --rank 2 --follow"""
    op, doc = _results(sweep_id)
    if op.type != SWEEP.name:
        fail(f"{sweep_id} is a {op.type}, not a sweep")
    ranking = doc.get("ranking", [])
    if rank > len(ranking):
        fail(f"the sweep ranked {len(ranking)} variant(s); there is no rank {rank}")
    entry = ranking[rank - 1]
    if entry.get("op_id"):
        console.print(f"rank {rank} was backtested in full already: ktrdr backtest show {entry['op_id']}")
        return
    params = SweepParams.model_validate(op.params)
    full = BacktestParams.model_validate({**params.child_params(entry["parameters"]), "include_curves": True})
    _submit(BACKTEST.name, full, follow_it=follow_it, json=json)


async def _load(c: AsyncClient, op_id: str) -> tuple[Operation, dict[str, Any] | None]:
    op = await c.get(op_id)
    data = await c.document(op)
    return op, (jsonlib.loads(data) if data else None)


def _results(op_id: str) -> tuple[Operation, dict[str, Any]]:
    op, doc = run_client(lambda c: _load(c, op_id))
    if doc is None:
        why = (f"it is {op.status.value}" + (f": {op.error}" if op.error else "")
               if op.status is not OpStatus.COMPLETED else "it stored none")
        fail(f"no results for {op_id}: {why}")
    return op, doc


@backtest_app.command("show")
def show(op_id: OpIdArg, trades: Annotated[int, typer.Option(min=0, metavar="N", help="Trades to list (the last "
                                                                                     "N; a sweep: the N best).")
                                           ] = 20,
         json: JsonOpt = False, wide: WideOpt = False) -> None:
    """Metrics and trades of a completed backtest, the ranking of a sweep, or a walk-forward's folds.

    Example: ktrdr backtest show backtesting-1e08cea7dcdb --trades 50"""
    op, doc = _results(op_id)
    # The model a neuro-fuzzy backtest traded is in the op's result, not in the stored result.
    model = (op.result or {}).get("model")
    if json:
        shown = doc if op.type == SWEEP.name else {k: v for k, v in _with_times(doc).items()
                                                       if k not in ("index_ns", "equity", "benchmark")}
        extra = {"model": model} if model else {}
        print(jsonlib.dumps({**shown, **extra, **({"warnings": op.warnings} if op.warnings else {})}, indent=2))
        return
    if op.type == SWEEP.name:
        console.print(_ranking_table(doc, limit=max(trades, 1), wide=wide))
        if doc.get("no_best"):
            console.print(f"[yellow]no best[/]: {escape(doc['no_best'])}")
        return
    if doc.get("format", "").startswith("ktrdr.walkforward"):
        console.print(_folds_table(doc, wide=wide))
        console.print(_walkforward_summary(doc))
        console.print(_metrics_table(doc["metrics"]))
        return
    config = doc.get("config", {})
    params = kv_line(doc.get("parameters") or {}) or "defaults"
    console.print(f"[bold]{escape(doc['strategy'])}[/] on {config.get('symbol')} {doc.get('timeframe')}, "
                  f"parameters {escape(params)}" + (f", model {model}" if model else "")
                  + ("" if config.get("close_at_end", True) else ", last position left open"))
    for warning in op.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(_metrics_table(doc["metrics"]))
    console.print(_trades_table(doc["trades"], trades, doc.get("index_ns"), _carried_at(doc), wide=wide))
    if doc.get("open_position"):
        console.print(_open_position(doc["open_position"], doc.get("index_ns"), _carried_at(doc)))


@backtest_app.command("compare")
def compare_cmd(
    op_ids: Annotated[list[str], typer.Argument(metavar="OP_ID", help="Two or more completed backtests' "
                                                                      "operation ids.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Their equity curves "
                                                "overlaid, as a PNG (each as a % of its starting capital).")] = None,
    json: JsonOpt = False,
) -> None:
    """Backtests side by side: every metric in one table, the equity curves on one scale.

    Example: ktrdr backtest compare backtesting-1e08cea7dcdb backtesting-77aa3f0e1b2c -o equity.png"""
    from ktrdr.backtest.compare import MAX_COMPARED, compare, growth_curves

    if not 2 <= len(op_ids) <= MAX_COMPARED:
        fail(f"give 2 to {MAX_COMPARED} backtests, not {len(op_ids)}")
    documents: dict[str, dict[str, Any]] = {}
    for op_id in op_ids:
        op, doc = _results(op_id)
        if op.type != BACKTEST.name:
            fail(f"{op_id} is a {op.type}; compare backtests (a sweep's best are backtested in full: the 'full' "
                 "column of `ktrdr backtest show`)")
        documents[op_id] = doc
    found = compare(documents)
    if json:
        print(jsonlib.dumps(found, indent=2))
        return
    # One column per backtest, headed by its id (whole): values fold at their words, none is dropped.
    table = FitTable(Col("", style="bold"), *(Col(op_id, justify="right", wrap=True) for op_id in op_ids),
                     title=f"{len(op_ids)} backtests, times UTC")
    for key in ("strategy", "symbol", "timeframe"):
        table.add_row(key, *(escape(str(found["runs"][i][key] or "-")) for i in op_ids))
    for key in ("start", "end"):
        table.add_row(key, *(timestamp(found["runs"][i][key]) for i in op_ids))
    table.add_row("parameters", *(escape(kv_line(found["runs"][i]["parameters"]) or "defaults") for i in op_ids))
    for name, values in found["metrics"].items():
        table.add_row(name, *(_fmt(values[i]) for i in op_ids))
    console.print(table)
    if output is not None:
        from ktrdr.backtest.plot import plot_compare

        curves = growth_curves(documents)
        if len(curves) < len(op_ids):
            console.print(f"[yellow]{len(op_ids) - len(curves)} of them stored no equity curve: not drawn[/]")
        console.print(f"wrote {plot_compare(curves, path=output, title='equity, % of starting capital')}")


@backtest_app.command("heatmap")
def heatmap_cmd(
    sweep_id: SweepIdArg,
    x: Annotated[str, typer.Option("--x", metavar="NAME", help="The parameter along the columns.")],
    y: Annotated[str, typer.Option("--y", metavar="NAME", help="The parameter along the rows.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Also write it as a "
                                                                                       "PNG.")] = None,
    json: JsonOpt = False,
) -> None:
    """A sweep's objective over two of its parameters: a plateau of good values reads as one.

    With more than two parameters, each cell is the best over the others; a lone spike reads as
    one too.

    Example: ktrdr backtest heatmap sweep-6b5fedf4d926 --x fast --y slow -o heatmap.png"""
    from ktrdr.backtest.sweep import heatmap

    op, doc = _results(sweep_id)
    if op.type != SWEEP.name:
        fail(f"{sweep_id} is a {op.type}, not a sweep")
    metric, descending = doc["metric"], bool(doc.get("descending", True))
    try:
        xs, ys, cells = heatmap(doc["ranking"], doc["grid"], metric, x=x, y=y, descending=descending)
    except ValueError as exc:
        fail(str(exc))
    if json:
        print(jsonlib.dumps({"metric": metric, "x": x, "y": y, "x_values": xs, "y_values": ys, "cells": cells}))
        return
    table = Table(title=f"{metric} of sweep {sweep_id}: {y} (rows) by {x} (columns)"
                        + (", best over the other parameters" if len(doc["grid"]) > 2 else ""))
    table.add_column(f"{y} \\ {x}")
    for value in xs:
        table.add_column(str(value), justify="right")
    for value, row in zip(ys, cells, strict=True):
        table.add_row(str(value), *(_fmt(c) for c in row))
    console.print(table)
    if output is not None:
        from ktrdr.backtest.plot import plot_heatmap

        console.print(f"wrote {plot_heatmap(xs, ys, cells, path=output, x=x, y=y, metric=metric)}")


@backtest_app.command("plot")
def plot(op_id: OpIdArg, output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE",
                                                               help="PNG file to write.")]) -> None:
    """Equity and drawdown chart of a completed backtest beside buy and hold, or of a walk-forward.

    A walk-forward's chart is its stitched out-of-sample curve with its fold boundaries.

    Example: ktrdr backtest plot backtesting-1e08cea7dcdb -o equity.png"""
    from ktrdr.backtest import BacktestResult
    from ktrdr.backtest.plot import plot_result

    op, doc = _results(op_id)
    if doc.get("format", "").startswith("ktrdr.walkforward"):
        from ktrdr.backtest.walkforward import Fold, plot_walkforward

        folds = [Fold(index=f["index"], **{k: datetime.fromisoformat(f[k])
                                          for k in ("in_start", "in_end", "out_start", "out_end")})
                 for f in doc["fold_windows"]]
        eff = doc.get("efficiency")
        title = (f"walk-forward {doc['symbol']} {doc['timeframe']}, {len(folds)} folds: out of sample "
                 f"{doc['metrics']['total_return_pct']:.2f} %, efficiency {'-' if eff is None else f'{eff:.2f}'}")
        written = plot_walkforward(index_ns=doc["index_ns"], equity=doc["equity"], folds=folds, path=output,
                                   title=title)
        console.print(f"wrote {written}")
        return
    if op.type == SWEEP.name or not doc.get("equity"):
        fail(f"{op_id} stored no equity curve (a sweep keeps every variant's metrics; its best are backtested "
             "again in full: the 'full' column of `ktrdr backtest show`)")
    result = BacktestResult.from_doc(doc)
    console.print(f"wrote {plot_result(result, output)}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.2f}"
    return str(value)


def _metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="metrics", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in metrics.items():
        table.add_row(key, _fmt(value))
    return table


# ``--json``'s trade times keep the format they were published with; tables print every time as
# every ktrdr command does (render.timestamp: YYYY-MM-DD HH:MM:SS, UTC).
JSON_TIME = "%Y-%m-%d %H:%M"


def _bar_times(index_ns: list[int] | None, bars: list[int], carried_at: str | None = None,
               *, for_json: bool = False) -> list[str] | None:
    """The fill bars' times (a close at the end fills on the last bar), or None without the bars' index.
    A bar before the first (< 0) is a carried position's entry, made in an earlier run (``carried_at``)."""
    if not index_ns:
        return None
    last = len(index_ns) - 1

    def shown(when: datetime) -> str:
        return when.astimezone(UTC).strftime(JSON_TIME) if for_json else timestamp(when)

    def at(b: int) -> str:
        if b < 0:
            return shown(datetime.fromisoformat(carried_at)) if carried_at else "before start"
        return shown(datetime.fromtimestamp(index_ns[min(b, last)] / 1e9, tz=UTC))

    return [at(b) for b in bars]


def _carried_at(doc: dict[str, Any]) -> str | None:
    """When the position a backtest carried in was entered (a walk-forward's carried fold), else None."""
    position = (doc.get("carry_in") or {}).get("position") or {}
    return position.get("entry_time")


def _trades_table(trades: dict[str, list[Any]], last: int, index_ns: list[int] | None = None,
                  carried_at: str | None = None, *, wide: bool = False) -> FitTable:
    count = len(trades.get("pnl", []))
    shown = range(max(0, count - last), count)
    entries = _bar_times(index_ns, trades.get("entry_bar", []), carried_at)
    exits = _bar_times(index_ns, trades.get("exit_bar", []))
    # Times when the bars' index is there; else (a sweep's child) the bar numbers are what there is.
    timed = entries is not None and exits is not None
    when = (Col("entry"), Col("exit")) if timed else (Col("entry_bar", justify="right"),
                                                        Col("exit_bar", justify="right"))
    # No borders: two times and six numbers, never cut; on a narrow terminal the bars held give way
    # first, then the quantity and the fill prices; the pnl last.
    table = FitTable(*when, Col("side", justify="right"), Col("qty", drop=4, justify="right"),
                     Col("in", drop=3, justify="right"), Col("out", drop=2, justify="right"),
                     Col("pnl", drop=1, justify="right"), Col("bars", drop=5, justify="right"),
                     title=f"{count} trade(s)" + (f", the last {len(shown)}" if len(shown) < count else "")
                     + " (times UTC)" * timed, box=None, pad_edge=False,
                     caption="in, out: fill prices; bars: bars held", wide=wide)
    columns = ("side", "size", "entry_price", "exit_price", "pnl", "bars_held")
    for i in shown:
        at = [entries[i], exits[i]] if entries is not None and exits is not None else [
            _fmt(trades["entry_bar"][i]), _fmt(trades["exit_bar"][i])]
        row = [trades[c][i] for c in columns]
        row[0] = "long" if row[0] > 0 else "short"
        table.add_row(*at, *(_fmt(v) for v in row))
    return table


def _open_position(pos: dict[str, Any], index_ns: list[int] | None, carried_at: str | None = None) -> str:
    """``open at the end: long 319 @ 73.21 since 2020-03-01 15:00, unrealised pnl 898.9 (marked to market)``."""
    side = "long" if pos.get("side", 1) > 0 else "short"
    since = _bar_times(index_ns, [int(pos["entry_bar"])], carried_at) if "entry_bar" in pos else None
    when = f" since {since[0]}" if since else (f" since bar {pos['entry_bar']}" if "entry_bar" in pos else "")
    return (f"open at the end: {side} {_fmt(pos.get('size'))} @ {_fmt(pos.get('entry_price'))}{when}, "
            f"unrealised pnl {_fmt(pos.get('unrealised_pnl'))} (marked to market, not a trade)")


def _with_times(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored result's trades with their entry and exit times, for --json (its bar index is left out)."""
    trades = dict(doc.get("trades") or {})
    entries = _bar_times(doc.get("index_ns"), trades.get("entry_bar", []), _carried_at(doc), for_json=True)
    exits = _bar_times(doc.get("index_ns"), trades.get("exit_bar", []), for_json=True)
    if entries is not None and exits is not None:
        trades = {"entry_time": entries, "exit_time": exits, **trades}
    return {**doc, "trades": trades}


def _objective_text(found: dict[str, Any]) -> str:
    """The objective a sweep or walk-forward ranked by (its metric alone, for one made before objectives)."""
    from subjects.objective import Objective

    raw = found.get("objective")
    return Objective.model_validate(raw).describe() if raw else str(found["metric"])


def _ranking_table(doc: dict[str, Any], *, limit: int, wide: bool = False) -> FitTable:
    metric = doc["metric"]
    eligible = doc.get("eligible")
    met = "" if eligible is None else f", {eligible} meet the objective"
    # The `full` op ids are what `backtest show/plot` take next: whole, and the last to give way.
    table = FitTable(
        Col("rank", justify="right"), Col("parameters", wrap=True), Col(metric, justify="right"),
        Col("nbhd", drop=6, justify="right"), Col("return %", drop=3, justify="right", wrap=True),
        Col("max dd %", drop=4, justify="right", wrap=True), Col("trades", drop=5, justify="right"),
        Col("full", drop=1), Col("excluded", drop=2, wrap=True),
        title=f"sweep {doc['sweep']}: {doc['completed']} of {doc['combinations']} ranked by "
              f"{escape(_objective_text(doc))} ({len(doc['failed'])} failed, {doc['cancelled']} cancelled{met})",
        caption="nbhd: the metric averaged over the variant and its adjacent grid points (a plateau "
                "from a spike); full: backtested again in full (ktrdr backtest show/plot it); "
                "excluded: why a variant can never be best", wide=wide)
    for r in doc["ranking"][:limit]:
        m = r["metrics"]
        table.add_row(str(r["rank"]), escape(" ".join(f"{k}={v}" for k, v in r["parameters"].items())),
                      _fmt(m.get(metric)), _fmt(r.get("neighbourhood")), _fmt(m.get("total_return_pct")),
                      _fmt(m.get("max_drawdown_pct")), _fmt(m.get("trades")), r.get("op_id") or "-",
                      escape(r.get("excluded") or ""))
    return table


def _top_table(result: dict[str, Any]) -> FitTable | str:
    metric = result["metric"]
    if not result["top"] and result.get("no_best"):
        return f"[yellow]no best of {result['combinations']}[/]: {escape(result['no_best'])}"
    table = FitTable(Col("rank", justify="right"), Col("parameters", wrap=True), Col(metric, justify="right"),
                     Col("return %", drop=2, justify="right", wrap=True), Col("full", drop=1),
                     title=f"best {len(result['top'])} of {result['combinations']} by "
                           f"{escape(_objective_text(result))}", wide_option=None)
    for r in result["top"]:
        table.add_row(str(r["rank"]), escape(" ".join(f"{k}={v}" for k, v in r["parameters"].items())),
                      _fmt(r.get(metric)), _fmt(r.get("total_return_pct")), r.get("op_id") or "-")
    return table


def _walkforward_summary(result: dict[str, Any]) -> str:
    """Out-of-sample trades pooled, buy-and-hold over the same bars, what the folds agreed on."""
    stats = result.get("trade_stats") or {}
    lines = []
    if stats:
        lines.append(f"out-of-sample trades: {stats.get('trades')}, win rate {_fmt(stats.get('win_rate'))}, "
                     f"profit factor {_fmt(stats.get('profit_factor'))}, pnl {_fmt(stats.get('total_pnl'))}; "
                     f"buy-and-hold over the same bars {_fmt(result.get('buy_and_hold_return_pct'))} %")
    for name, s in (result.get("stability") or {}).items():
        lines.append(f"{name}: {' '.join(str(v) for v in s['values'])} (most common {s['most_common']}, "
                     f"{s['agreement']:.0%} of folds)")
    if result.get("fold_ends"):
        lines.append(f"positions at fold ends: {result['fold_ends']}")
    return escape("\n".join(lines))


def _folds_table(result: dict[str, Any], *, wide: bool = False, wide_option: str | None = "--wide") -> FitTable:
    metric = result["metric"]
    eff = result.get("efficiency")
    m = result.get("metrics", {})
    table = FitTable(Col("fold", justify="right"), Col("oos from", drop=2), Col("chosen", wrap=True),
                     Col("is", justify="right"), Col("oos", justify="right"), Col("is ann%", drop=4, justify="right"),
                     Col("oos ann%", drop=3, justify="right"), Col("warm-up", drop=5, justify="right"),
                     title=f"walk-forward ({result['approach']}): out of sample {_fmt(m.get('total_return_pct'))} "
                           f"%, sharpe {_fmt(m.get('sharpe_ratio'))}, efficiency {_fmt(eff)}",
                     caption=f"is/oos: in sample / out of sample; {metric}, then annualised return %; oos from: "
                             "UTC", wide=wide, wide_option=wide_option)
    for row in result["folds"]:
        chosen = escape(" ".join(f"{k}={v}" for k, v in row["chosen"].items()))
        table.add_row(str(row["fold"]), timestamp(row["out_start"]), chosen,
                      _fmt(row["in_sample"].get(metric)), _fmt(row["out_of_sample"].get(metric)),
                      _fmt(row["in_sample"].get("annualized_return_pct")),
                      _fmt(row["out_of_sample"].get("annualized_return_pct")), str(row.get("warmup_bars", "-")))
    return table
