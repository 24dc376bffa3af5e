"""Sweep benchmark through the whole stack (prints figures; not a test).

Starts its own nats-server with the roles `ktrdr up` uses, a coordinator process with the status
API and 1, 2 and 4 backtest worker processes (``python -m worker_backtest``, each with its own
empty KTRDR_HOME, as if on its own machine: the data comes from the ``data`` bucket). For each
fleet size it submits the same sweep (SMA crossover, ``fast`` x ``slow`` grid) on a year of
hourly synthetic bars through
``POST /api/v1/backtests/sweeps`` and measures submit -> the sweep completed with its ranking.

    python bench/sweep.py [--variants 500] [--workers 1,2,4] [--bars 8760]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ktrdr.data import DataStore, synth  # noqa: E402
from ktrdr.data.shared import publish_dataset  # noqa: E402
from ktrdr.natsd import NatsServer, free_port  # noqa: E402
from ktrdr.runtime.connection import NatsAuth, connect  # noqa: E402
from ktrdr.security.fleet import provision  # noqa: E402
from subjects import roles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def wait_for(predicate, timeout: float, what: str) -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


async def run_sweep(api: httpx.AsyncClient, body: dict[str, object]) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    created = await api.post("/api/v1/backtests/sweeps", json=body)
    created.raise_for_status()
    op_id = created.json()["op_id"]

    async def finished() -> dict[str, object] | None:
        op = (await api.get(f"/api/v1/operations/{op_id}")).json()
        return op if op["status"] in ("completed", "failed", "cancelled") else None

    op = await wait_for(finished, 3600, f"sweep {op_id}")
    assert isinstance(op, dict)
    return time.perf_counter() - t0, op


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=500, help="a multiple of 10 (fast has 10 values)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--bars", type=int, default=8760, help="hourly bars: 8,760 is a calendar year")
    args = parser.parse_args()
    slow_count = max(1, args.variants // 10)
    grid = {"fast": list(range(5, 55, 5)), "slow": list(range(20, 20 + 4 * slow_count, 4))}
    variants = len(grid["fast"]) * len(grid["slow"])
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
            procs.append(spawn("coordinator", {**base, **fleet.env(roles.COORDINATOR), "KTRDR_API_PORT": str(port),
                                               "KTRDR_HOME": str(tmp / "c"), "KTRDR_API_TOKEN": token},
                               tmp / "coordinator.log"))
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
                store.save("BENCH", "1h", synth("BENCH", "1h", "2020-01-01", args.bars, seed=11))
                await publish_dataset(nc.jetstream(), store, "BENCH", "1h")
                await nc.drain()
                print(f"sweep of {variants} SMA-crossover variants on {args.bars:,} hourly bars "
                      f"({os.cpu_count()} CPU cores on this machine)")
                print(f"  {'workers':>7}  {'wall s':>8}  {'backtests/s':>11}  {'speedup':>7}  {'ms per child':>12}")
                baseline = None
                for n in fleets:
                    workers = [spawn("worker_backtest", {**base, **fleet.env(roles.WORKER),
                                                         "KTRDR_WORKER_ID": f"bench-{n}-{i}",
                                                         "KTRDR_HOME": str(tmp / f"w{n}-{i}")},
                                     tmp / f"worker-{n}-{i}.log") for i in range(n)]

                    async def leased(count: int = n) -> bool:
                        found = (await api.get("/api/v1/workers", params={"type": "backtest"})).json()
                        return found["total"] == count

                    await wait_for(leased, 60, f"{n} workers")
                    body = {"strategy": "sma_crossover", "symbol": "BENCH", "timeframe": "1h",
                            "grid": grid, "metric": "sharpe_ratio", "top": 5}
                    wall, op = await run_sweep(api, body)
                    result = op.get("result") or {}
                    if op["status"] != "completed" or result.get("completed") != variants:
                        raise RuntimeError(f"sweep ended {op['status']}: {op.get('error') or result}")
                    children = await all_children(api, str(op["op_id"]))
                    busy = [c for c in children if c.get("started_at") and c.get("completed_at")]
                    per_child = sum(_seconds(c) for c in busy) / max(len(busy), 1)
                    baseline = baseline or wall
                    print(f"  {n:>7}  {wall:>8.2f}  {variants / wall:>11.1f}  {baseline / wall:>6.2f}x  "
                          f"{per_child * 1000:>12.1f}")
                    stop(workers)

                    async def gone() -> bool:
                        return (await api.get("/api/v1/workers", params={"type": "backtest"})).json()["total"] == 0

                    await wait_for(gone, 30, "the workers to stop")
                best = result.get("best") if isinstance(result, dict) else None
                if best:
                    print(f"  best variant: {best['parameters']} sharpe {best['sharpe_ratio']:.3f}")
        finally:
            stop(procs)
            server.stop()


async def all_children(api: httpx.AsyncClient, parent_id: str) -> list[dict[str, object]]:
    """Every child of a sweep: the list answers in pages of at most 1,000."""
    found: list[dict[str, object]] = []
    offset: int | None = 0
    while offset is not None:
        page = (await api.get("/api/v1/operations", params={"parent_id": parent_id, "limit": 1000,
                                                            "offset": offset})).json()
        found += page["operations"]
        offset = page.get("next_offset")
    return found


def _seconds(op: dict[str, object]) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(str(op["completed_at"])) - datetime.fromisoformat(str(op["started_at"]))
            ).total_seconds()


if __name__ == "__main__":
    asyncio.run(main())
