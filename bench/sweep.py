"""Sweep benchmark through the whole stack (prints figures; not a test).

For each sweep size (500 and 10,000 SMA-crossover variants by default) on a year of hourly
synthetic bars, in one run, each measured ``--repeat`` times (best printed; the platform's after
one small sweep, as a fleet that has run before). Two baselines, measured in the same run: ktrdr's
engine in this process as a plain loop over the variants (``run_backtest`` + ``with_parameters``),
and vectorbt, when it is installed (``pip install vectorbt``; not a dependency of ktrdr), doing the
same sweep its own way: both SMAs, their crossings, ``Portfolio.from_signals`` filling at the next
bar's open with the same costs and sizing, then the headline metrics (total return, Sharpe, Sortino,
volatility, max drawdown, trades, win rate, profit factor), in chunks of at most 500 variants
(~2 GB each). Then the block evaluator in this process (``run_block``, blocks of at most 2,000),
and the platform with 1 and 2 backtest worker processes (``python -m worker_backtest``, each with
its own empty KTRDR_HOME, as if on its own machine: the data comes from the ``data`` bucket),
measuring ``POST /api/v1/backtests/sweeps`` -> the sweep completed with its ranking. A worker keeps
indicators across blocks and sweeps of the same data (``IndicatorCache(shared=True)``), so the
first of the ``--repeat`` runs computes them and the later ones find them: the first run is printed
too (each fleet's workers are new processes, so it starts cold). Every figure is
printed as backtests/s and as a ratio to each baseline, with how many op records the sweep made and
the coordinator's RSS. Its own nats-server, with the roles `ktrdr up` uses.

Run the same script against two trees (copy it into the other's ``bench/``: it puts its own tree
first on ``sys.path``, and the workers it starts run from there) for before and after figures.

    python bench/sweep.py [--variants 500,10000] [--workers 1,2] [--bars 8760] [--no-vectorbt]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines import stop_all  # noqa: E402
from dispatch import all_children  # noqa: E402

from ktrdr.data import DataStore, synth  # noqa: E402
from ktrdr.data.shared import publish_dataset  # noqa: E402
from ktrdr.natsd import NatsServer, free_port  # noqa: E402
from ktrdr.runtime.connection import NatsAuth, connect  # noqa: E402
from ktrdr.security.fleet import provision  # noqa: E402
from ktrdr.strategy.signals import SHARED  # noqa: E402
from subjects import roles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT)


async def wait_for(predicate, timeout: float, what: str, every: float = 0.1) -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


async def run_sweep(api: httpx.AsyncClient, body: dict[str, object]) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    created = await api.post("/api/v1/backtests/sweeps", json=body)
    created.raise_for_status()
    op_id = created.json()["op_id"]

    async def finished() -> dict[str, object] | None:
        op = (await api.get(f"/api/v1/operations/{op_id}")).json()
        return op if op["status"] in ("completed", "failed", "cancelled") else None

    # Polled often enough that the wall time is the sweep's, not the poll's (a GET costs ~1 ms).
    op = await wait_for(finished, 3600, f"sweep {op_id}", every=0.02)
    assert isinstance(op, dict)
    return time.perf_counter() - t0, op


def grid_for(variants: int) -> dict[str, list[int]]:
    """SMA crossover: ``fast`` 5, 10, ... (10 values up to 1,000 variants, else 20) x as many ``slow``
    as make the count (20, 24, ...): the issue's 500-variant grid is fast 5..50 x slow 20..216."""
    nf = 10 if variants <= 1000 else 20
    return {"fast": list(range(5, 5 + 5 * nf, 5)), "slow": list(range(20, 20 + 4 * max(1, variants // nf), 4))}


def plain_loop(bars: object, grid: dict[str, list[int]]) -> float:
    """The baseline: ktrdr's engine in this process, one run_backtest per variant."""
    from ktrdr.backtest import BacktestConfig, run_backtest
    from ktrdr.backtest.sweep import combinations
    from ktrdr.strategy import load_strategy, with_parameters

    strategy, config = load_strategy("sma_crossover"), BacktestConfig(timeframe="1h", symbol="BENCH")
    t0 = time.perf_counter()
    for combo in combinations(grid):
        run_backtest(bars, with_parameters(strategy, combo), config)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def blocks_in_process(bars: object, grid: dict[str, list[int]]) -> float:
    """The block evaluator alone, in this process: what a worker does with a sweep's blocks."""
    from ktrdr.backtest import BacktestConfig
    from ktrdr.backtest.block import run_block
    from ktrdr.backtest.sweep import combinations
    from ktrdr.strategy import load_strategy

    strategy, config = load_strategy("sma_crossover"), BacktestConfig(timeframe="1h", symbol="BENCH")
    combos = combinations(grid)
    t0 = time.perf_counter()
    for first in range(0, len(combos), BLOCK):
        block = run_block(bars, strategy, combos[first:first + BLOCK], config)  # type: ignore[arg-type]
        assert not block.errors, block.errors
    return time.perf_counter() - t0


BLOCK = 2000  # variants per block in this process: the most a sweep's block holds
VBT_CHUNK = 500  # vectorbt's columns at a time: ~2 GB of frames each


def vectorbt_sweep(bars: pd.DataFrame, grid: dict[str, list[int]]) -> float:
    """The same sweep in vectorbt: SMAs, crossings, from_signals (next open, same costs and sizing:
    a quarter of the cash in whole shares), then the headline metrics, chunk by chunk."""
    import vectorbt as vbt

    from ktrdr.backtest.sweep import combinations

    combos = combinations(grid)
    close, next_open = bars["close"], bars["open"].shift(-1)  # a signal at a close fills at the next open
    t0 = time.perf_counter()
    for first in range(0, len(combos), VBT_CHUNK):
        chunk = combos[first:first + VBT_CHUNK]
        fast = vbt.MA.run(close, window=[c["fast"] for c in chunk], short_name="fast")
        slow = vbt.MA.run(close, window=[c["slow"] for c in chunk], short_name="slow")
        pf = vbt.Portfolio.from_signals(close, fast.ma_crossed_above(slow), fast.ma_crossed_below(slow),
                                        price=next_open, size=0.25, size_type="percent", size_granularity=1,
                                        fees=0.001, slippage=0.0005, init_cash=100_000.0, freq="1h")
        for metric in (pf.total_return, pf.sharpe_ratio, pf.sortino_ratio, pf.annualized_volatility,
                       pf.max_drawdown, pf.trades.count, pf.trades.win_rate, pf.trades.profit_factor):
            metric()
    return time.perf_counter() - t0


def vectorbt_ready() -> bool:
    """vectorbt imported and its numba functions compiled (a minute the first time), or not installed."""
    try:
        import vectorbt  # noqa: F401
    except ImportError:
        return False
    import warnings

    warnings.filterwarnings("ignore", module="vectorbt")
    warnings.filterwarnings("ignore", category=FutureWarning)
    vectorbt_sweep(synth("BENCH", "1h", "2020-01-01", 500, seed=1), {"fast": [5], "slow": [20, 30]})
    return True


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="500,10000", help="comma-separated sweep sizes")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--bars", type=int, default=8760, help="hourly bars: 8,760 is a calendar year")
    parser.add_argument("--block-size", type=int, default=None, help="variants per block (default: the sweep's own)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed")
    parser.add_argument("--timeline", action="store_true", help="print when each child was created, started, ended")
    parser.add_argument("--no-vectorbt", action="store_true", help="leave vectorbt out even when it is installed")
    args = parser.parse_args()
    with_vbt = not args.no_vectorbt and vectorbt_ready()
    sizes = [int(v) for v in args.variants.split(",")]
    fleets = [int(n) for n in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="ktrdr-bench-sweep-") as tmp_dir:
        tmp = Path(tmp_dir)
        fleet = provision(tmp / "fleet")
        server = NatsServer(store_dir=tmp / "nats", config_file=fleet.config)
        server.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            port = free_port()
            base = {"KTRDR_NATS_URL": server.url, "KTRDR_LOG_LEVEL": "WARNING"}
            token = secrets.token_urlsafe(32)
            coordinator = spawn("coordinator", {**base, **fleet.env(roles.COORDINATOR), "KTRDR_API_PORT": str(port),
                                                "KTRDR_HOME": str(tmp / "c"), "KTRDR_API_TOKEN": token},
                                tmp / "coordinator.log")
            procs.append(coordinator)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                         headers={"Authorization": f"Bearer {token}"}) as api:
                async def up() -> bool:
                    try:
                        return (await api.get("/health")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_for(up, 60, "the coordinator")
                # The coordinator has made the `data` bucket: publish the year of bars as a client would.
                nc = await connect(server.url, name="bench", auth=NatsAuth(
                    credential=fleet.credentials[roles.CLIENT]), reconnect=False)
                store = DataStore(root=tmp / "publisher")
                bars = synth("BENCH", "1h", "2020-01-01", args.bars, seed=11)
                store.save("BENCH", "1h", bars)
                await publish_dataset(nc.jetstream(), store, "BENCH", "1h")
                print(f"SMA-crossover sweeps on {args.bars:,} hourly bars ({os.cpu_count()} CPU cores on this "
                      "machine; the coordinator and nats-server share them with the workers)")
                if not with_vbt:
                    print("  (vectorbt: not installed or left out; `pip install vectorbt` for its column)")
                print(f"  {'variants':>8}  {'how':<30}  {'wall s':>7}  {'backtests/s':>11}  {'vs loop':>7}  "
                      f"{'vs vectorbt':>11}  {'op records':>10}  {'coord. RSS MB':>13}")
                for variants in sizes:
                    grid = grid_for(variants)
                    count = len(grid["fast"]) * len(grid["slow"])
                    loop = min(plain_loop(bars, grid) for _ in range(args.repeat))
                    vbt = min(vectorbt_sweep(bars, grid) for _ in range(args.repeat)) if with_vbt else None

                    def row(how: str, wall: float, records: str = "-", rss: str = "-", *, n: int = count,
                            base: float = loop, other: float | None = vbt) -> None:
                        versus = f"{other / wall:>10.2f}x" if other else f"{'-':>11}"
                        print(f"  {n:>8}  {how:<30}  {wall:>7.2f}  {n / wall:>11.1f}  {base / wall:>6.2f}x  "
                              f"{versus}  {records:>10}  {rss:>13}")

                    row("engine, plain loop", loop)
                    if vbt is not None:
                        row(f"vectorbt {_vbt_version()}, chunks of {VBT_CHUNK}", vbt)
                    # Workers keep indicators across blocks and sweeps on the same data (IndicatorCache(shared=
                    # True)): the first run computes them, the later ones find them. Both are printed.
                    SHARED.clear()
                    in_process = [blocks_in_process(bars, grid) for _ in range(args.repeat)]
                    row("engine, run_block in process", min(in_process))
                    row("  its first run (cold indicators)", in_process[0])
                    for n in fleets:
                        workers = [spawn("worker_backtest", {**base, **fleet.env(roles.WORKER),
                                                             "KTRDR_WORKER_ID": f"bench-{variants}-{n}-{i}",
                                                             "KTRDR_HOME": str(tmp / f"w{variants}-{n}-{i}")},
                                         tmp / f"worker-{variants}-{n}-{i}.log") for i in range(n)]

                        async def leased(want: int = n) -> bool:
                            found = (await api.get("/api/v1/workers", params={"type": "backtest"})).json()
                            return found["total"] == want

                        await wait_for(leased, 60, f"{n} workers")
                        body = {"strategy": "sma_crossover", "symbol": "BENCH", "timeframe": "1h",
                                "grid": grid, "objective": {"metric": "sharpe_ratio"}, "top": 5,
                                **({"block_size": args.block_size} if args.block_size else {})}
                        # A fleet that has run something: imports done, the dataset fetched and cached.
                        await run_sweep(api, {**body, "grid": {"fast": [5], "slow": [20, 30]}})
                        runs = [await run_sweep(api, body) for _ in range(args.repeat)]
                        wall, op = min(runs, key=lambda r: r[0])
                        result = op.get("result") or {}
                        if op["status"] != "completed" or result.get("completed") != count:
                            raise RuntimeError(f"sweep ended {op['status']}: {op.get('error') or result}")
                        kids = await all_children(api, str(op["op_id"]))
                        records = 1 + len(kids)
                        if args.timeline:
                            timeline(op, kids)
                        row(f"platform, {n} worker{'s' if n > 1 else ''}", wall, str(records),
                            f"{rss_mb(coordinator.pid):.0f}")
                        row("  its first run (cold indicators)", runs[0][0])
                        stop_all(workers, timeout=30)

                        async def gone() -> bool:
                            return (await api.get("/api/v1/workers", params={"type": "backtest"})).json()["total"] == 0

                        await wait_for(gone, 30, "the workers to stop")
                info = await nc.jetstream().stream_info("KV_ops")
                print(f"  ops bucket after all runs: {info.state.messages} messages, {info.state.bytes / 1e6:.2f} MB")
                await nc.drain()
        finally:
            stop_all(procs, timeout=30)
            server.stop()


def _vbt_version() -> str:
    import vectorbt

    return str(vectorbt.__version__)


def timeline(parent: dict[str, object], children: list[dict[str, object]]) -> None:
    from datetime import datetime

    t0 = datetime.fromisoformat(str(parent["created_at"]))

    def at(op: dict[str, object], key: str) -> str:
        value = op.get(key)
        return f"{(datetime.fromisoformat(str(value)) - t0).total_seconds() * 1000:7.0f}" if value else "      -"

    print(f"    parent: started {at(parent, 'started_at')} ms, completed {at(parent, 'completed_at')} ms")
    for c in sorted(children, key=lambda c: str(c["created_at"])):
        print(f"    {str(c['op_id'])[-8:]:>8} {str(c['type']):<15} created {at(c, 'created_at')} started "
              f"{at(c, 'started_at')} completed {at(c, 'completed_at')}  {c.get('worker_id')}")


if __name__ == "__main__":
    asyncio.run(main())
