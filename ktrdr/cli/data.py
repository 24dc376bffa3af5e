"""``ktrdr data``: the local market-data store (``$KTRDR_HOME/data``) and the shared ``data`` bucket.

``import`` and ``synth`` store locally and publish to the ``data`` Object Store bucket when NATS is
reachable, so that backtest workers on any machine get the bars; they say which happened.
``fetch`` submits a download to the IB host (``ktrdr host ib``) and says when none is running.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ktrdr.cli.common import TIMEFRAME_HELP, Guard, WideOpt, settings, submit_and_maybe_follow
from ktrdr.cli.render import Col, FitTable, console, fail, timestamp
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import KtrdrError
from subjects import names
from subjects.models import Operation, OpStatus
from subjects.names import DATA_OBJECTS

if TYPE_CHECKING:
    from ktrdr.data import DatasetInfo, DataStore

data_app = typer.Typer(help="Market data: import, sample, synth, list, show and fetch (from Interactive "
                            "Brokers).\n\nExample: ktrdr data synth --symbol SYN --bars 20000 --seed 1",
                       no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PublishOpt = Annotated[bool, typer.Option("--publish/--no-publish",
                                          help=f"Also upload to the {DATA_OBJECTS!r} bucket (when NATS is up).")]
TimeframeOpt = Annotated[str, typer.Option("--timeframe", "-t", metavar="TIMEFRAME", help=TIMEFRAME_HELP)]
# Notices go to stderr so that `--json` output on stdout stays parseable.
notices = Console(stderr=True)


def store() -> DataStore:
    # Deferred: pandas and numpy cost every other ktrdr command half a second to import.
    from ktrdr.data import DataStore

    return DataStore(root=settings().data_dir)


def publish(symbol: str, timeframe: str) -> dict[str, object]:
    """Upload one stored dataset; never fails the command: an unreachable NATS is reported."""
    from ktrdr.data.shared import publish_dataset

    s = settings()

    async def work() -> dict[str, object]:
        try:
            client = await asyncio.wait_for(AsyncClient.from_settings(s, timeout=2).connect(), timeout=6)
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            return {"published": False, "reason": f"NATS at {s.nats_url} is not reachable ({why})"}
        try:
            assert client.nc is not None
            done = await publish_dataset(client.nc.jetstream(), store(), symbol, timeframe)
            return {"published": True, "object": done.name, "digest": done.digest, "size": done.size}
        finally:
            await client.close()

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
    """A bar's time as every ktrdr command prints times (``YYYY-MM-DD HH:MM:SS``, UTC)."""
    return timestamp(value)


@data_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="CSV with timestamp and "
                                                                                          "OHLCV columns.")],
    symbol: Annotated[str | None, typer.Option(metavar="SYMBOL", help="The symbol to store it as (default: from a "
                                                                      "SYMBOL_timeframe.csv name).")] = None,
    timeframe: Annotated[str | None, typer.Option("--timeframe", "-t", metavar="TIMEFRAME", help=f"{TIMEFRAME_HELP} "
                                                  "Default: from a SYMBOL_timeframe.csv name.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace the stored bars instead of merging.")] = False,
    publish_it: PublishOpt = True,
    json: JsonOpt = False,
) -> None:
    """Import a CSV file into the local store (merged with what is there) and publish it.

    The layout: a header line, then one bar a line, ``timestamp,open,high,low,close,volume``
    (timestamps ISO 8601, UTC unless they say otherwise). `ktrdr data sample` writes an example.
    A file over 256 MiB, or with more bars than a dataset holds (5,592,405), is refused: import it in parts.

    Example: ktrdr data import EURUSD_1h.csv"""
    from ktrdr.data.store import UnnamedDataset

    try:
        info = store().import_csv(file, symbol=symbol, timeframe=timeframe, replace=replace)
    except UnnamedDataset as exc:
        fail(UnnamedDataset(exc.path, how="pass --symbol and --timeframe"))
    except (ValueError, OSError) as exc:
        # Bad content and the size limits alike (DatasetTooLarge is a ValueError): one line, exit 2.
        fail(exc)
    _report(info, publish(info.symbol, info.timeframe) if publish_it else None, json)


@data_app.command("sample")
def sample(
    output: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write it.")] = Path("EURUSD_1h.csv"),
) -> None:
    """Write the sample CSV that ships with ktrdr (EURUSD 1h, January 2024): the layout `data import` reads.

    Example: ktrdr data sample && ktrdr data import EURUSD_1h.csv"""
    from ktrdr.data.csv_io import sample_csv

    if output.exists():
        fail(f"{output} exists already: name another file")
    try:
        output.write_bytes(sample_csv())
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    console.print(f"wrote {output}; import it with: ktrdr data import {output}", soft_wrap=True)


@data_app.command("synth")
def synth_(
    symbol: Annotated[str, typer.Option(metavar="SYMBOL", help="The symbol to store the bars as.")] = "SYNTH",
    timeframe: TimeframeOpt = "1h",
    bars: Annotated[int, typer.Option(min=1, metavar="N", help="How many bars to make.")] = 10_000,
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed: the same seed and options make the same "
                                                        "bars.")] = 0,
    start: Annotated[str, typer.Option(metavar="DATE", help="First bar (UTC): a date or date and time.")
                     ] = "2020-01-01",
    mean_reversion: Annotated[float, typer.Option(min=0, max=1, metavar="STRENGTH", help="Plant a learnable "
                                                  "mean-reverting pattern, 0 to 1 (0: none; 0.3: clear).")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Replace a stored dataset of this symbol and timeframe "
                                        "that holds other bars.")] = False,
    publish_it: PublishOpt = True,
    json: JsonOpt = False,
) -> None:
    """Make deterministic synthetic bars (regime-switching GBM), store them and publish them.

    A dataset of the same symbol and timeframe is replaced only with --force (the same bars again,
    same options and seed, are no change).

    Example: ktrdr data synth --symbol SYN --timeframe 1h --bars 20000 --seed 1"""
    from ktrdr.data import synth

    try:
        df = synth(symbol, timeframe, start, bars, seed, mean_reversion=mean_reversion)
        s = store()
        if s.exists(symbol, timeframe) and not force and not s.load(symbol, timeframe).equals(df):
            held = s.info(symbol, timeframe)
            fail(f"{symbol} {timeframe} is stored already with other bars ({held.bars:,}, {_ts(held.start)} to "
                 f"{_ts(held.end)}): --force replaces them, or choose another --symbol")
        s.save(symbol, timeframe, df)
        info = s.info(symbol, timeframe)
    except ValueError as exc:
        fail(f"{exc}")
    _report(info, publish(symbol, timeframe) if publish_it else None, json)


@data_app.command("list")
def list_(json: JsonOpt = False, wide: WideOpt = False) -> None:
    """List the datasets in the local store: symbol, timeframe, bars, first and last bar (UTC).

    Example: ktrdr data list"""
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
    console.print(datasets_table(infos, s.root, wide=wide))


def datasets_table(infos: list[dict[str, object]], root: object, *, wide: bool = False) -> FitTable:
    """``data list``'s table: symbol and timeframe whole; the end, the bar count, the start give way."""
    table = FitTable(Col("symbol"), Col("timeframe"), Col("bars", drop=2, justify="right"), Col("start", drop=1),
                     Col("end", drop=3), title=f"{len(infos)} dataset(s) in {root}, times UTC", wide=wide)
    for i in infos:
        table.add_row(str(i["symbol"]), str(i["timeframe"]), f"{i['bars']:,}", _ts(i["start"]), _ts(i["end"]))
    return table


@data_app.command("show")
def show(symbol: Annotated[str, typer.Argument(metavar="SYMBOL", help="A stored symbol (`ktrdr data list`).")],
         timeframe: TimeframeOpt = "1h",
         gaps: Annotated[int, typer.Option(min=0, metavar="N", help="Unexpected gaps to list (the first N).")] = 10,
         json: JsonOpt = False) -> None:
    """Show one dataset: range (UTC), bar count and gaps (weekend closes apart).

    Example: ktrdr data show SYN --timeframe 1h"""
    s = store()
    try:
        info = s.info(symbol, timeframe)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"{exc}")
    if json:
        print(jsonlib.dumps(info.to_dict(), indent=2))
        return
    console.print(f"[bold]{symbol} {timeframe}[/]: {info.bars:,} bars from {_ts(info.start)} to {_ts(info.end)}")
    unexpected = info.unexpected_gaps
    console.print(f"gaps: {len(info.gaps)} ({len(info.gaps) - len(unexpected)} weekend, "
                  f"{len(unexpected)} unexpected)")
    for gap in unexpected[:gaps]:
        console.print(f"  after {_ts(gap.after)}, before {_ts(gap.before)}: {gap.missing_bars:,} bar(s) missing")


# Applies to `data fetch --follow` only: a download without one waits in the queue for ever.
IB_POLL_S = 1.0


async def ib_hosts(client: AsyncClient) -> list[str]:
    """The workers holding a lease that can take IB downloads (``ktrdr host ib``)."""
    return [w.worker_id for w in await client.workers() if names.CAP_DATA_IB in w.capabilities]


def no_ib_host_guard(wait_s: float) -> Guard:
    """Say at once when no IB host holds a lease; following, cancel the download once none has for
    ``wait_s`` seconds (0: never), with a reason that says so."""

    async def guard(client: AsyncClient, op: Operation, following: bool) -> str | None:
        if await ib_hosts(client):
            return None
        notices.print(f"[yellow]no IB host holds a lease[/]: {op.op_id} waits until one runs (`ktrdr host ib` "
                      "with TWS or IB Gateway; `ktrdr ib status` shows them)"
                      + (f"; giving up after {wait_s:g} s (--ib-wait)" if following and wait_s else ""),
                      soft_wrap=True)
        if not following or not wait_s:
            return None
        loop = asyncio.get_running_loop()
        alone_since = loop.time()
        while True:
            await asyncio.sleep(IB_POLL_S)
            try:
                current = await client.get(op.op_id)
                hosts = await ib_hosts(client)
            except KtrdrError:
                continue  # a look that failed is tried again; following reports a platform that went away
            if current.status is not OpStatus.PENDING:
                return None  # a host took it, or it ended (a Ctrl-C): nothing left to watch
            if hosts:
                alone_since = loop.time()
            elif loop.time() - alone_since >= wait_s:
                reason = f"no IB host was available within {wait_s:g} s (start one with `ktrdr host ib`)"
                reply = await client.cancel(op.op_id, reason)
                if not reply.accepted:
                    return None  # taken meanwhile: the download goes on
                return f"{reason}; {op.op_id} is cancelled"

    return guard


@data_app.command("fetch")
def fetch(
    symbol: Annotated[str, typer.Argument(metavar="SYMBOL", help="Symbol, e.g. AAPL or EURUSD.")],
    timeframe: TimeframeOpt = "1h",
    start: Annotated[str | None, typer.Option(metavar="DATE", help="First bar (UTC): a date or date and time, e.g. "
                                                                   "2024-01-02 or 2024-01-02T09:30.")] = None,
    end: Annotated[str | None, typer.Option(metavar="DATE", help="End, exclusive (UTC), as --start (default: "
                                                                 "now).")] = None,
    mode: Annotated[str, typer.Option(metavar="MODE", help="tail: after the last stored bar; backfill: before the "
                                                           "first; full: the whole range.")] = "tail",
    ib_wait: Annotated[float | None, typer.Option(
        "--ib-wait", min=0, metavar="SECONDS", help="With --follow: cancel the download when no IB host has held "
                                                    "a lease for this many seconds (default KTRDR_IB_WAIT_S, 60; 0: "
                                                    "wait for ever).")] = None,
    follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")] = False,
    json: JsonOpt = False,
) -> None:
    """Download bars from Interactive Brokers (through `ktrdr host ib`) into its store and the data bucket.

    Example: ktrdr data fetch AAPL -t 1h --start 2024-01-02 --follow"""
    from pydantic import ValidationError

    from ktrdr.optypes.data_load import DATA_LOAD
    from subjects.data import DataLoadParams

    try:
        params = DataLoadParams.model_validate(
            {"symbol": symbol, "timeframe": timeframe, "start": start, "end": end, "mode": mode})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        fail(f"{where}: {first['msg']}")
    wait_s = settings().ib_wait_s if ib_wait is None else ib_wait
    submit_and_maybe_follow(DATA_LOAD.name, params.model_dump(mode="json", exclude_none=True),
                            follow_it=follow_it, json=json, guard=no_ib_host_guard(wait_s))
