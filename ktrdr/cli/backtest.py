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

from ktrdr.cli.common import JsonOpt, OpIdArg, checked, run_client, submit_and_maybe_follow
from ktrdr.cli.render import console, fail, kv_line
from ktrdr.client.aio import AsyncClient
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.sweep import SWEEP
from subjects.models import Operation, OpStatus
from subjects.objective import DEFAULT_METRIC, METRICS
from subjects.params import BacktestParams, SweepParams

backtest_app = typer.Typer(help="Backtests, parameter sweeps and walk-forward analyses on the backtest workers.",
                           no_args_is_help=True)

FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")]
SymbolOpt = Annotated[str, typer.Option("--symbol", "-s")]
TimeframeOpt = Annotated[str, typer.Option("--timeframe", "-t")]
StartOpt = Annotated[str | None, typer.Option(help="First bar (UTC), e.g. 2020-01-01.")]
EndOpt = Annotated[str | None, typer.Option(help="Last bar (UTC).")]
CapitalOpt = Annotated[float, typer.Option()]
CostOpt = Annotated[float, typer.Option()]
SizingOpt = Annotated[str, typer.Option(help="fraction or all_cash.")]
FractionOpt = Annotated[float, typer.Option(help="Share of equity per entry (sizing fraction).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Strategy parameter override name=value (repeatable).")]
# The objective: one option set for every command that chooses among variants (subjects.objective).
MetricOpt = Annotated[str, typer.Option(help="What ranks variants: " + ", ".join(sorted(METRICS)) + ".")]
DirectionOpt = Annotated[str | None, typer.Option(help="max or min (default: the metric's own; drawdowns min).")]
MinTradesOpt = Annotated[int, typer.Option("--min-trades", min=0, help="A variant with fewer trades is never "
                                           "best (0: one that never trades may be).")]
MaxDrawdownOpt = Annotated[float | None, typer.Option("--max-drawdown", help="A variant whose drawdown is "
                                                      "deeper (in %) is never best.")]
CloseAtEndOpt = Annotated[bool, typer.Option("--close-at-end/--no-close-at-end", help="Close a position still "
                                             "open after a window's last bar at its close (a trade, paying the "
                                             "exit), or leave it open, marked to market.")]
WarmupBarsOpt = Annotated[int, typer.Option("--warmup-bars", min=0, help="Bars before --start that only warm "
                                           "the indicators up (no trades, no equity).")]
RequireOpt = Annotated[list[str] | None, typer.Option("--require", help="A relation every chosen variant meets: "
                                                      "'fast < slow', 'fast >= 5' (repeatable).")]


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
    strategy: Annotated[str, typer.Argument(help="Packaged name, name in the strategies dir, or a YAML file.")],
    symbol: SymbolOpt,
    timeframe: TimeframeOpt = "1h",
    start: StartOpt = None,
    end: EndOpt = None,
    capital: CapitalOpt = 100_000.0,
    commission: CostOpt = 0.001,
    slippage: CostOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    overrides: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Neuro-fuzzy: the model as name@version (default: the latest "
                                                   "version of the strategy's name; the result names it).")] = None,
    close_at_end: CloseAtEndOpt = True,
    warmup_bars: WarmupBarsOpt = 0,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest a strategy on stored bars (the data must be in the 'data' bucket: ktrdr data ...)."""
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
    strategy: Annotated[str, typer.Argument(help="Packaged name, name in the strategies dir, or a YAML file.")],
    param: Annotated[list[str], typer.Option("--param", "-p", help="name=start:stop:step or name=a,b,c (repeatable).")],
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
    top: Annotated[int, typer.Option(min=1, help="Best variants kept in the op result.")] = 10,
    full: Annotated[int, typer.Option(min=0, max=100, help="Best variants backtested again in full "
                                                           "(equity curve and trades).")] = 1,
    block_size: Annotated[int | None, typer.Option(min=1, help="Variants per worker job (default: a few "
                                                               "blocks per live worker slot).")] = None,
    capital: CapitalOpt = 100_000.0,
    commission: CostOpt = 0.001,
    slippage: CostOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest every combination of the parameter grid across the workers and rank them."""
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
    strategy: Annotated[str, typer.Argument(help="Packaged name, name in the strategies dir, or a YAML file.")],
    symbol: SymbolOpt,
    timeframe: TimeframeOpt = "1h",
    start: StartOpt = None,
    end: EndOpt = None,
    in_sample: Annotated[str | None, typer.Option(help="In-sample length: bars (2000) or a duration "
                                                       "(180d, 26w).")] = None,
    out_of_sample: Annotated[str | None, typer.Option(help="Out-of-sample length: bars or a duration.")] = None,
    folds: Annotated[int | None, typer.Option(min=1, help="Fold count, instead of the lengths.")] = None,
    ratio: Annotated[float, typer.Option(help="With --folds: in-sample bars per out-of-sample bar.")] = 4.0,
    anchored: Annotated[bool, typer.Option("--anchored", help="In-sample windows all start at the first bar "
                                                              "(default: rolling).")] = False,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Rule-based: the grid each in-sample fold sweeps, name=start:stop:step or "
                              "name=a,b,c.")] = None,
    metric: MetricOpt = DEFAULT_METRIC,
    direction: DirectionOpt = None,
    min_trades: MinTradesOpt = 1,
    max_drawdown: MaxDrawdownOpt = None,
    require: RequireOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Neuro-fuzzy: training epochs per fold.")] = None,
    close_at_end: CloseAtEndOpt = True,
    carry: Annotated[bool, typer.Option("--carry", help="Carry a position open at a fold's end into the next "
                                        "fold, whose strategy keeps it (one trade) or closes it at its first open; "
                                        "the folds then run in order and only the last follows "
                                        "--close-at-end.")] = False,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="Give each window's backtests the bars "
                                         "before it that their indicators need (the default), or start each "
                                         "window cold.")] = True,
    capital: CapitalOpt = 100_000.0,
    commission: CostOpt = 0.001,
    slippage: CostOpt = 0.0005,
    sizing: SizingOpt = "fraction",
    fraction: FractionOpt = 0.25,
    overrides: SetOpt = None,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Walk-forward analysis: choose on each in-sample fold (a sweep of --param, or a training for a
    neuro-fuzzy strategy), backtest the choice on the next out-of-sample fold, join those curves."""
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
        console.print(_folds_table(op.result))
        console.print(_walkforward_summary(op.result))


@backtest_app.command("variant")
def variant(
    sweep_id: OpIdArg,
    rank: Annotated[int, typer.Option(min=1, help="The variant's rank in the sweep's ranking.")] = 1,
    follow_it: FollowOpt = False,
    json: JsonOpt = False,
) -> None:
    """Backtest one of a sweep's variants again in full (equity curve and trades), by its rank."""
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
def show(op_id: OpIdArg, trades: Annotated[int, typer.Option(min=0, help="Trades to list (the last ones).")] = 20,
         json: JsonOpt = False) -> None:
    """Metrics and trades of a completed backtest, the ranking of a sweep, or a walk-forward's folds."""
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
        console.print(_ranking_table(doc, limit=max(trades, 1)))
        if doc.get("no_best"):
            console.print(f"[yellow]no best[/]: {escape(doc['no_best'])}")
        return
    if doc.get("format", "").startswith("ktrdr.walkforward"):
        console.print(_folds_table(doc))
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
    console.print(_trades_table(doc["trades"], trades, doc.get("index_ns"), _carried_at(doc)))
    if doc.get("open_position"):
        console.print(_open_position(doc["open_position"], doc.get("index_ns"), _carried_at(doc)))


@backtest_app.command("compare")
def compare_cmd(
    op_ids: Annotated[list[str], typer.Argument(help="Two or more completed backtests.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Their equity curves overlaid, as a PNG "
                                                "(each as a % of its starting capital).")] = None,
    json: JsonOpt = False,
) -> None:
    """Backtests side by side: every metric in one table, the equity curves on one scale."""
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
    table = Table(title=f"{len(op_ids)} backtests")
    table.add_column("")
    for op_id in op_ids:
        table.add_column(op_id, justify="right")
    for key in ("strategy", "symbol", "timeframe", "start", "end"):
        table.add_row(key, *(escape(str(found["runs"][i][key] or "-"))[:40] for i in op_ids))
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
    sweep_id: OpIdArg,
    x: Annotated[str, typer.Option("--x", help="The parameter along the columns.")],
    y: Annotated[str, typer.Option("--y", help="The parameter along the rows.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write it as a PNG.")] = None,
    json: JsonOpt = False,
) -> None:
    """A sweep's objective over two of its parameters (with more, each cell is the best over the
    others): a plateau of good values reads as one, a lone spike as one."""
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
def plot(op_id: OpIdArg, output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")]) -> None:
    """Equity and drawdown chart of a completed backtest beside buy and hold, or of a walk-forward's
    stitched out-of-sample curve with its fold boundaries."""
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


def _bar_times(index_ns: list[int] | None, bars: list[int], carried_at: str | None = None) -> list[str] | None:
    """The fill bars' times (a close at the end fills on the last bar), or None without the bars' index.
    A bar before the first (< 0) is a carried position's entry, made in an earlier run (``carried_at``)."""
    if not index_ns:
        return None
    last = len(index_ns) - 1

    def at(b: int) -> str:
        if b < 0:
            return _stamp(carried_at) if carried_at else "before start"
        return datetime.fromtimestamp(index_ns[min(b, last)] / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M")

    return [at(b) for b in bars]


def _stamp(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _carried_at(doc: dict[str, Any]) -> str | None:
    """When the position a backtest carried in was entered (a walk-forward's carried fold), else None."""
    position = (doc.get("carry_in") or {}).get("position") or {}
    return position.get("entry_time")


def _trades_table(trades: dict[str, list[Any]], last: int, index_ns: list[int] | None = None,
                  carried_at: str | None = None) -> Table:
    count = len(trades.get("pnl", []))
    shown = range(max(0, count - last), count)
    # No borders: two timestamps and six numbers fit 80 columns whole (a number is never cut).
    table = Table(title=f"{count} trade(s)" + (f", the last {len(shown)}" if len(shown) < count else "")
                  + " (times UTC)" * bool(index_ns), box=None, pad_edge=False, header_style="bold",
                  caption="in, out: fill prices; bars: bars held")
    entries = _bar_times(index_ns, trades.get("entry_bar", []), carried_at)
    exits = _bar_times(index_ns, trades.get("exit_bar", []))
    if entries is not None and exits is not None:
        table.add_column("entry", no_wrap=True)
        table.add_column("exit", no_wrap=True)
    else:  # a result stored without its bars' times (a sweep's child): bar numbers are what there is
        table.add_column("entry_bar", justify="right")
        table.add_column("exit_bar", justify="right")
    columns = ("side", "size", "entry_price", "exit_price", "pnl", "bars_held")
    for col in ("side", "qty", "in", "out", "pnl", "bars"):
        table.add_column(col, justify="right", no_wrap=True)
    for i in shown:
        when = [entries[i], exits[i]] if entries is not None and exits is not None else [
            _fmt(trades["entry_bar"][i]), _fmt(trades["exit_bar"][i])]
        row = [trades[c][i] for c in columns]
        row[0] = "long" if row[0] > 0 else "short"
        table.add_row(*when, *(_fmt(v) for v in row))
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
    entries = _bar_times(doc.get("index_ns"), trades.get("entry_bar", []), _carried_at(doc))
    exits = _bar_times(doc.get("index_ns"), trades.get("exit_bar", []))
    if entries is not None and exits is not None:
        trades = {"entry_time": entries, "exit_time": exits, **trades}
    return {**doc, "trades": trades}


def _objective_text(found: dict[str, Any]) -> str:
    """The objective a sweep or walk-forward ranked by (its metric alone, for one made before objectives)."""
    from subjects.objective import Objective

    raw = found.get("objective")
    return Objective.model_validate(raw).describe() if raw else str(found["metric"])


def _ranking_table(doc: dict[str, Any], *, limit: int) -> Table:
    metric = doc["metric"]
    eligible = doc.get("eligible")
    met = "" if eligible is None else f", {eligible} meet the objective"
    table = Table(title=f"sweep {doc['sweep']}: {doc['completed']} of {doc['combinations']} ranked by "
                        f"{_objective_text(doc)} ({len(doc['failed'])} failed, {doc['cancelled']} cancelled{met})",
                  caption="nbhd: the metric averaged over the variant and its adjacent grid points (a plateau "
                          "from a spike); full: backtested again in full (ktrdr backtest show/plot it); "
                          "excluded: why a variant can never be best")
    for col in ("rank", "parameters", metric, "nbhd", "return %", "max dd %", "trades", "full", "excluded"):
        table.add_column(col)
    for r in doc["ranking"][:limit]:
        m = r["metrics"]
        table.add_row(str(r["rank"]), " ".join(f"{k}={v}" for k, v in r["parameters"].items()), _fmt(m.get(metric)),
                      _fmt(r.get("neighbourhood")), _fmt(m.get("total_return_pct")), _fmt(m.get("max_drawdown_pct")),
                      _fmt(m.get("trades")), r.get("op_id") or "-", r.get("excluded") or "")
    return table


def _top_table(result: dict[str, Any]) -> Table | str:
    metric = result["metric"]
    if not result["top"] and result.get("no_best"):
        return f"[yellow]no best of {result['combinations']}[/]: {escape(result['no_best'])}"
    table = Table(title=f"best {len(result['top'])} of {result['combinations']} by {_objective_text(result)}")
    for col in ("rank", "parameters", metric, "return %", "full"):
        table.add_column(col)
    for r in result["top"]:
        table.add_row(str(r["rank"]), " ".join(f"{k}={v}" for k, v in r["parameters"].items()),
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


def _folds_table(result: dict[str, Any]) -> Table:
    metric = result["metric"]
    eff = result.get("efficiency")
    m = result.get("metrics", {})
    table = Table(title=f"walk-forward ({result['approach']}): out of sample {_fmt(m.get('total_return_pct'))} %, "
                        f"sharpe {_fmt(m.get('sharpe_ratio'))}, efficiency {_fmt(eff)}",
                  caption=f"is/oos: in sample / out of sample; {metric}, then annualised return %")
    table.add_column("fold", justify="right")
    table.add_column("oos from", no_wrap=True)
    table.add_column("chosen")
    for col in ("is", "oos", "is ann%", "oos ann%", "warm-up"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in result["folds"]:
        chosen = " ".join(f"{k}={v}" for k, v in row["chosen"].items())
        table.add_row(str(row["fold"]), row["out_start"][:10], chosen,
                      _fmt(row["in_sample"].get(metric)), _fmt(row["out_of_sample"].get(metric)),
                      _fmt(row["in_sample"].get("annualized_return_pct")),
                      _fmt(row["out_of_sample"].get("annualized_return_pct")), str(row.get("warmup_bars", "-")))
    return table
