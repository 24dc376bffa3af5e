"""``ktrdr data``: the local market-data store (``$KTRDR_HOME/data``) and the shared ``data`` bucket.

``import`` and ``synth`` store locally and publish to the ``data`` Object Store bucket when NATS is
reachable, so that backtest workers on any machine get the bars; they say which happened.
Other modules add commands to ``data_app`` (the IB host registers ``data fetch``).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ktrdr.cli.common import client_auth
from ktrdr.cli.render import console
from ktrdr.cli.settings import CliSettings
from ktrdr.runtime.connection import connect
from subjects.names import DATA_OBJECTS

if TYPE_CHECKING:
    from ktrdr.data import DatasetInfo, DataStore

data_app = typer.Typer(help="Market data: import, synthesize, list and inspect.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PublishOpt = Annotated[bool, typer.Option("--publish/--no-publish",
                                          help=f"Also upload to the {DATA_OBJECTS!r} bucket (when NATS is up).")]
TimeframeOpt = Annotated[str, typer.Option("--timeframe", "-t", help="Bar timeframe: 1m 5m 15m 30m 1h 4h 1d 1w.")]


def store() -> DataStore:
    # Deferred: pandas and numpy cost every other ktrdr command half a second to import.
    from ktrdr.data import DataStore

    return DataStore(root=CliSettings().data_dir)


def publish(symbol: str, timeframe: str) -> dict[str, object]:
    """Upload one stored dataset; never fails the command: an unreachable NATS is reported."""
    from ktrdr.data.shared import publish_dataset

    s = CliSettings()

    async def work() -> dict[str, object]:
        try:
            nc = await asyncio.wait_for(connect(s.nats_url, name="ktrdr-cli", auth=client_auth(s), connect_timeout=2,
                                                reconnect=False, quiet=True), timeout=6)
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            return {"published": False, "reason": f"NATS at {s.nats_url} is not reachable ({why})"}
        try:
            done = await publish_dataset(nc.jetstream(), store(), symbol, timeframe)
            return {"published": True, "object": done.name, "digest": done.digest, "size": done.size}
        finally:
            await nc.close()

    return asyncio.run(work())


def _report(info: DatasetInfo, shared: dict[str, object] | None, json: bool) -> None:
    if json:
        print(jsonlib.dumps({**info.to_dict(), **({"bucket": shared} if shared else {})}, indent=2))
        return
    console.print(f"stored [bold]{info.symbol} {info.timeframe}[/]: {info.bars:,} bars, "
                  f"{_ts(info.start)} to {_ts(info.end)} in {store().root}")
    if shared is None:
        return
    if shared["published"]:
        console.print(f"published to the {DATA_OBJECTS!r} bucket as {shared['object']} "
                      f"({shared['size']:,} bytes): every backtest worker can use it")
    else:
        console.print(f"[yellow]not published[/]: {shared['reason']}. Stored on this machine only; run "
                      "the command again with NATS up so that workers elsewhere get the data.")


def _ts(value: object) -> str:
    return "-" if value is None else str(value)


@data_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV with timestamp and OHLCV columns.")],
    symbol: Annotated[str | None, typer.Option(help="Default: from a SYMBOL_timeframe.csv name.")] = None,
    timeframe: Annotated[str | None, typer.Option("--timeframe", "-t")] = None,
    replace: Annotated[bool, typer.Option(help="Replace the stored bars instead of merging.")] = False,
    publish_it: PublishOpt = True,
    json: JsonOpt = False,
) -> None:
    """Import a CSV file into the local store (merged with what is there) and publish it."""
    try:
        info = store().import_csv(file, symbol=symbol, timeframe=timeframe, replace=replace)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _report(info, publish(info.symbol, info.timeframe) if publish_it else None, json)


@data_app.command("synth")
def synth_(
    symbol: Annotated[str, typer.Option()] = "SYNTH",
    timeframe: TimeframeOpt = "1h",
    bars: Annotated[int, typer.Option(min=1)] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
    start: Annotated[str, typer.Option(help="First bar (UTC).")] = "2020-01-01",
    mean_reversion: Annotated[float, typer.Option(min=0, max=1, help="Plant a learnable pattern (0.3: clear).")] = 0.0,
    publish_it: PublishOpt = True,
    json: JsonOpt = False,
) -> None:
    """Make deterministic synthetic bars (regime-switching GBM), store them and publish them."""
    from ktrdr.data import synth

    try:
        df = synth(symbol, timeframe, start, bars, seed, mean_reversion=mean_reversion)
        s = store()
        s.save(symbol, timeframe, df)
        info = s.info(symbol, timeframe)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _report(info, publish(symbol, timeframe) if publish_it else None, json)


@data_app.command("list")
def list_(json: JsonOpt = False) -> None:
    """List the datasets in the local store."""
    s = store()
    infos = []
    for symbol, timeframe in s.list():
        df = s.load(symbol, timeframe)
        infos.append({"symbol": symbol, "timeframe": timeframe, "bars": len(df),
                      "start": df.index[0].isoformat() if len(df) else None,
                      "end": df.index[-1].isoformat() if len(df) else None})
    if json:
        print(jsonlib.dumps(infos, indent=2))
        return
    table = Table(title=f"{len(infos)} dataset(s) in {s.root}")
    for col in ("symbol", "timeframe", "bars", "start", "end"):
        table.add_column(col)
    for i in infos:
        table.add_row(str(i["symbol"]), str(i["timeframe"]), f"{i['bars']:,}", _ts(i["start"]), _ts(i["end"]))
    console.print(table)


@data_app.command("show")
def show(symbol: str, timeframe: TimeframeOpt = "1h",
         gaps: Annotated[int, typer.Option(min=0, help="Gaps to list.")] = 10, json: JsonOpt = False) -> None:
    """Show one dataset: range, bar count and gaps (weekend closes apart)."""
    s = store()
    try:
        info = s.info(symbol, timeframe)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if json:
        print(jsonlib.dumps(info.to_dict(), indent=2))
        return
    console.print(f"[bold]{symbol} {timeframe}[/]: {info.bars:,} bars from {_ts(info.start)} to {_ts(info.end)}")
    unexpected = info.unexpected_gaps
    console.print(f"gaps: {len(info.gaps)} ({len(info.gaps) - len(unexpected)} weekend, "
                  f"{len(unexpected)} unexpected)")
    for gap in unexpected[:gaps]:
        console.print(f"  {gap.to_dict()}")
