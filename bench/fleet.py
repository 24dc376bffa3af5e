"""Fleet-size benchmark: what each worker costs the platform, for fleets of N workers (prints figures;
not a test).

For each N (``--sizes``; a fleet of 2 is always measured first, in the same run, as the baseline) a
fresh platform: nats-server with the roles `ktrdr up` runs (``--security``), a coordinator with its
API (``python -m coordinator``), and N workers shared by ``--procs`` child processes of this script.
Every simulated worker is a real ``ktrdr.runtime.worker.Worker`` (the runtime of every worker type)
serving ``dummy.any`` with 1 slot: its own NATS connection and worker credential, registration on
``worker.register``, a real lease in the ``workers`` bucket renewed every heartbeat, pull requests on
the shared ``jobs-dummy-any`` consumer, claims by ``kv.create``, the subscription to its forwarded cancels.
Only the process is shared (many workers on one event loop): nats-server and the coordinator see N
workers as they would see N processes. A worker killed for phase 5 has its tasks cancelled and its
connection closed without its lease deleted: what nats-server sees of a kill -9.

Measured at each N, in this order (``--phases`` picks):
  1. idle: CPU (seconds per second, from /proc) of the coordinator, nats-server and the simulating
     processes; RSS; lease writes per second (the ``workers`` bucket's stream); messages per second
     in and out of nats-server, its connections and subscriptions; then the same with one dashboard
     page connected (``GET /api/v1/stream``): the bytes per second pushed to it;
  2. listing the workers: ``AsyncClient.workers()`` (what `ktrdr workers` does, connection made),
     ``GET /api/v1/workers`` (the route the dashboard and the status API serve), and `ktrdr workers`
     as a command (Python's start-up included);
  3. cancel fan-out: how many subscriptions a request on ``ops.<id>.cancel`` matches (nats-server's
     ``/subsz``), the messages and CPU per request for ids nobody runs (only the coordinator answers
     them), and the reply latency for a running op (its worker answers);
  6. a sweep of ``--sweep-blocks`` queued blocks (no simulated worker serves ``backtest.cpu``)
     cancelled: until every block is cancelled, and the messages and CPU it took;
  4. dispatch: throughput of zero-duration dummy ops submitted through the NATS service (32 at a
     time), with the CPU, lease writes and nats-server messages per op;
  5. lease expiry: ``--kills`` workers die, at most a tenth of the fleet at once; time until the
     coordinator marks each gone (its log line), from the worker's last heartbeat and from the kill.

``--tree LABEL=DIR``, twice, runs the coordinator and the simulated workers from two copies of the
code, size by size in one run, and prints the second against the first (before and after a change).

    python bench/fleet.py [--sizes 10,100,500,1000] [--phases 123456] [--procs 2] [--ops 1000] [--kills 6]
                          [--security auth|tls|none] [--heartbeat-s 1] [--worker-env KTRDR_X=V]
                          [--tree before=DIR --tree after=DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# The code the platform runs (--tree): a simulating child imports the runtime from it.
CODE = Path(os.environ.get("FLEET_CODE_ROOT") or ROOT)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(CODE))

import httpx  # noqa: E402
from dispatch import (  # noqa: E402
    MODES,
    Setup,
    Watch,
    all_children,
    light_record,
    make_setup,
    pct,
)

import nats  # noqa: E402
from ktrdr.natsd import free_port  # noqa: E402
from ktrdr.runtime.connection import NatsAuth  # noqa: E402
from ktrdr.security.credentials import NatsCredential  # noqa: E402
from subjects import names, roles  # noqa: E402
from subjects.models import CancelReply, WorkerLease, decode  # noqa: E402

LEASE_TTL = 5.0
BASELINE = 2
GONE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*worker (\S+) is gone: lease expired")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_precise(pid: int) -> float:
    """CPU seconds of a process's live threads, to the nanosecond (/proc/<pid>/task/*/schedstat): /proc's
    tick counts (10 ms) are too coarse for a few hundred cancel requests. A thread that has ended takes
    its time with it: the processes measured here keep theirs (event loops, nats-server's Go threads)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def auth_for(setup: Setup, role: str) -> NatsAuth:
    env = setup.role_env(role)
    creds, ca = env.get("KTRDR_NATS_CREDS"), env.get("KTRDR_NATS_CA")
    return NatsAuth(credential=NatsCredential.load(Path(creds)) if creds else None,
                    credential_file=Path(creds) if creds else None, ca=Path(ca) if ca else None)


# --- the simulated workers (a child process) ---------------------------------------------------------

def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def child(first: int, count: int) -> None:
    """``count`` Worker instances on this event loop; commands on stdin, answers on stdout (JSON lines)."""
    logging.basicConfig(level=logging.ERROR)
    from ktrdr.dummy import run_dummy
    from ktrdr.optypes.dummy import DUMMY
    from ktrdr.runtime.settings import WorkerSettings
    from ktrdr.runtime.worker import Worker

    workers: dict[str, Worker] = {}
    gate = asyncio.Semaphore(16)  # connections opened at once

    async def start(i: int) -> None:
        worker_id = f"fleet-{i:05d}"
        w = Worker(settings=WorkerSettings(worker_id=worker_id), worker_type="backtest",
                   capabilities=[names.CAP_DUMMY_ANY], handlers={DUMMY: run_dummy}, slots=1)
        async with gate:
            await w.start()
        workers[worker_id] = w

    began = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(first, first + count)))
    await asyncio.gather(*(w.registered.wait() for w in workers.values()))
    emit({"ready": len(workers), "took_s": time.perf_counter() - began})

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command, _, arg = line.strip().partition(" ")
        if command == "kill":
            # What nats-server sees of a kill -9: the connection ends, no lease is deleted, no
            # subscription is taken back first. The worker's own tasks end with it.
            # (The runtime's private tasks: a kill has no API.)
            w = workers.pop(arg)
            at = time.time()
            for task in list(getattr(w, "_tasks", None) or []):
                task.cancel()
            sweeper = getattr(w.publisher, "_sweeper", None)
            if sweeper is not None:
                sweeper.cancel()
            assert w.nc is not None
            await w.nc.close()
            emit({"killed": arg, "at": at, "host": w.host})
        elif command == "stats":
            emit({"in_msgs": sum(w.nc.stats["in_msgs"] for w in workers.values() if w.nc is not None),
                  "out_msgs": sum(w.nc.stats["out_msgs"] for w in workers.values() if w.nc is not None)})
        elif command == "exit":
            break
    os._exit(0)  # the platform goes with us: no graceful stop of every worker


class Child:
    """One simulating process and its line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process, ids: list[str]) -> None:
        self.proc = proc
        self.ids = ids
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                await self.lines.put(json.loads(raw))

    async def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self.lines.get(), timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.reader.cancel()


# --- the parent: one platform per fleet size ---------------------------------------------------------

class Platform:
    def __init__(self, setup: Setup, home: Path, n: int, args: argparse.Namespace, code: Path) -> None:
        self.setup, self.home, self.n, self.args, self.code = setup, home, n, args, code
        self.api_port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.children: list[Child] = []
        inherited = {k: v for k, v in os.environ.items() if k not in ("KTRDR_NATS_CREDS", "KTRDR_NATS_CA")}
        self.env = {**inherited, "KTRDR_NATS_URL": setup.url, "KTRDR_LOG_LEVEL": "WARNING",
                    "KTRDR_LEASE_TTL_S": str(LEASE_TTL), "KTRDR_HEARTBEAT_S": str(args.heartbeat_s),
                    "KTRDR_HOME": str(home), "PYTHONPATH": str(code), "FLEET_CODE_ROOT": str(code)}
        self.log = home / "coordinator.log"

    async def start(self) -> float:
        env = {**self.env, **self.setup.role_env(roles.COORDINATOR), "KTRDR_API_PORT": str(self.api_port),
               "KTRDR_API_TOKEN": self.token}
        self.coordinator = subprocess.Popen([sys.executable, "-m", "coordinator"], cwd=self.code, env=env,
                                            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30,
                                     headers={"Authorization": f"Bearer {self.token}"})
        await self.wait_workers(0, timeout=60)
        t0 = time.perf_counter()
        procs = min(self.args.procs, self.n)
        env = {**self.env, **self.setup.role_env(roles.WORKER),
               **dict(kv.split("=", 1) for kv in self.args.worker_env)}
        for p in range(procs):
            first, count = p * self.n // procs, (p + 1) * self.n // procs - p * self.n // procs
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--child", str(first), str(count), cwd=self.code,
                env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=open(self.home / f"sim{p}.log", "ab"))  # noqa: SIM115
            self.children.append(Child(proc, [f"fleet-{i:05d}" for i in range(first, first + count)]))
        for c in self.children:
            ready = await asyncio.wait_for(c.lines.get(), 600)
            if "ready" not in ready:
                raise SystemExit(f"a simulating process failed: {ready}; see {self.home}")
        await self.wait_workers(self.n, timeout=120)
        return time.perf_counter() - t0

    async def wait_workers(self, n: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if (await self.api.get("/health")).json()["workers"] == n:
                    return
            await asyncio.sleep(0.2)
        raise SystemExit(f"the coordinator did not see {n} workers in {timeout:g} s; see {self.home}")

    def pids(self) -> dict[str, list[int]]:
        assert self.coordinator is not None and self.setup.server.pid is not None
        return {"coordinator": [self.coordinator.pid], "nats-server": [self.setup.server.pid],
                "workers": [c.proc.pid for c in self.children]}

    def expired(self) -> int:
        """Leases the coordinator has seen expire so far (its log): a live worker's, when its heartbeats
        fell behind."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if GONE.match(line))

    def cpu(self) -> dict[str, float]:
        return {name: sum(cpu_precise(pid) for pid in pids) for name, pids in self.pids().items()}

    async def varz(self) -> dict[str, Any]:
        return (await self.api.get(f"http://127.0.0.1:{self.setup.server.http_port}/varz")).json()

    async def stop(self) -> None:
        for c in self.children:
            c.kill()
        for c in self.children:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.proc.wait(), 10)
        if self.coordinator is not None:
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(20)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()
        await self.api.aclose()


class Window:
    """CPU per process, nats-server messages and lease writes over a stretch of time."""

    def __init__(self, p: Platform, js: Any) -> None:
        self.p, self.js = p, js

    async def __aenter__(self) -> Window:
        self.cpu0 = self.p.cpu()
        self.varz0 = await self.p.varz()
        self.leases0 = await self.lease_seq()
        self.expired0 = self.p.expired()
        self.t0 = time.perf_counter()
        return self

    async def lease_seq(self) -> int:
        return (await self.js.stream_info(names.kv_stream(names.WORKERS_BUCKET))).state.last_seq

    async def __aexit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        cpu1 = self.p.cpu()
        self.cpu_s = {k: cpu1[k] - self.cpu0[k] for k in cpu1}
        varz1 = await self.p.varz()
        self.in_msgs = varz1["in_msgs"] - self.varz0["in_msgs"]
        self.out_msgs = varz1["out_msgs"] - self.varz0["out_msgs"]
        self.lease_writes = await self.lease_seq() - self.leases0
        self.expired = self.p.expired() - self.expired0
        if self.expired:
            print(f"    !! {self.expired} live worker(s) marked gone meanwhile: their heartbeats fell more than the "
                  "lease TTL behind")


def timing(name: str, values_s: list[float], unit: str = "ms") -> tuple[float, float]:
    scale = 1000 if unit == "ms" else 1
    p50, p99 = pct(values_s, 50) * scale, pct(values_s, 99) * scale
    print(f"    {name:<58} p50 {p50:9.2f} {unit}  p99 {p99:9.2f} {unit}  max {max(values_s) * scale:9.2f} {unit}"
          f"  (n={len(values_s)})")
    return p50, p99


class Bench:
    """One fleet size's platform, the bench's own connection to it, and the figures so far."""

    def __init__(self, p: Platform, nc: Any, js: Any, watch: Watch, args: argparse.Namespace) -> None:
        self.p, self.nc, self.js, self.watch, self.args = p, nc, js, watch, args
        self.n = p.n
        self.f: dict[str, float] = {}
        self.idle_per_s: dict[str, float] = {}

    async def idle(self) -> None:
        f, p, n = self.f, self.p, self.n
        async with Window(p, self.js) as w:
            await asyncio.sleep(self.args.idle_s)
        varz = await p.varz()
        self.idle_per_s = {k: v / w.elapsed for k, v in w.cpu_s.items()}
        f["idle_coord_cpu"] = self.idle_per_s["coordinator"] * 1000
        f["idle_nats_cpu"] = self.idle_per_s["nats-server"] * 1000
        f["idle_workers_cpu"] = self.idle_per_s["workers"] * 1000
        f["idle_lease_writes"] = w.lease_writes / w.elapsed
        f["idle_in_msgs"] = w.in_msgs / w.elapsed
        f["idle_out_msgs"] = w.out_msgs / w.elapsed
        f["coord_rss"] = rss_mb(p.pids()["coordinator"][0])
        f["nats_rss"] = rss_mb(p.pids()["nats-server"][0])
        f["workers_rss"] = sum(rss_mb(pid) for pid in p.pids()["workers"])
        f["connections"] = varz["connections"]
        f["subscriptions"] = varz["subscriptions"]
        print(f"  1. idle, {w.elapsed:.1f} s: CPU (ms per s) coordinator {f['idle_coord_cpu']:.1f}, nats-server "
              f"{f['idle_nats_cpu']:.1f}, simulated workers {f['idle_workers_cpu']:.1f} "
              f"({f['idle_workers_cpu'] * 1000 / n:.0f} µs/s each)")
        print(f"     lease writes {f['idle_lease_writes']:.0f}/s; nats-server messages {f['idle_in_msgs']:.0f} in, "
              f"{f['idle_out_msgs']:.0f} out per s ({f['idle_in_msgs'] / n:.2f} / {f['idle_out_msgs'] / n:.2f} "
              "per worker)")
        print(f"     RSS coordinator {f['coord_rss']:.0f} MB, nats-server {f['nats_rss']:.0f} MB, simulating "
              f"processes {f['workers_rss']:.0f} MB; nats-server connections {f['connections']:.0f}, "
              f"subscriptions {f['subscriptions']:.0f}")

    async def page(self) -> None:
        """The same with one dashboard page connected: what the workers' heartbeats cost it."""
        pushed = events = 0

        async def read() -> None:
            nonlocal pushed, events
            async with self.p.api.stream("GET", "/api/v1/stream") as r:
                async for chunk in r.aiter_bytes():
                    pushed += len(chunk)
                    events += chunk.count(b"event: workers")

        reader = asyncio.create_task(read())
        await asyncio.sleep(1.0)
        pushed = events = 0
        async with Window(self.p, self.js) as w:
            await asyncio.sleep(self.args.page_s)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader
        self.f["page_coord_cpu"] = w.cpu_s["coordinator"] / w.elapsed * 1000
        self.f["page_kb_s"] = pushed / w.elapsed / 1024
        print(f"     with one dashboard page: coordinator {self.f['page_coord_cpu']:.1f} ms/s CPU; the page is sent "
              f"{self.f['page_kb_s']:.1f} KiB/s ({events / w.elapsed:.1f} workers batches/s)")

    async def listing(self) -> None:
        from ktrdr.client.aio import AsyncClient

        f, p, n, args = self.f, self.p, self.n, self.args
        client = await AsyncClient(nats_url=p.setup.url, auth=auth_for(p.setup, roles.CLIENT), timeout=30).connect()
        listed: list[float] = []
        for _ in range(args.lists):
            t0 = time.perf_counter()
            found = await client.workers()
            listed.append(time.perf_counter() - t0)
            assert len(found) == n, (len(found), n)
        await client.close()
        api_lat: list[float] = []
        size = 0
        for _ in range(args.lists):
            t0 = time.perf_counter()
            r = await p.api.get("/api/v1/workers")
            api_lat.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["total"] == n
            size = len(r.content)
        cli_env = {**p.env, **p.setup.role_env(roles.CLIENT)}
        cli: list[float] = []
        for i in range(args.cli_runs + 1):  # the first one, not counted, warms the file cache
            t0 = time.perf_counter()
            done = subprocess.run([str(Path(sys.executable).parent / "ktrdr"), "workers"], env=cli_env, cwd=p.code,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode:
                print(f"    `ktrdr workers` failed ({done.returncode}): {done.stderr.decode()[-500:]}")
            elif i:
                cli.append(time.perf_counter() - t0)
        print("  2. listing the workers")
        f["list_client_p50"], _ = timing("AsyncClient.workers() (direct gets of the bucket)", listed)
        f["list_api_p50"], _ = timing(f"GET /api/v1/workers ({size / 1024:.0f} KiB)", api_lat)
        if cli:
            f["list_cli_p50"], _ = timing("`ktrdr workers` command, Python start-up included", cli, unit="s")
        f["list_api_kib"] = size / 1024

    async def cancels(self) -> None:
        f, p, args, nc = self.f, self.p, self.args, self.nc
        subsz = (await p.api.get(f"http://127.0.0.1:{p.setup.server.http_port}/subsz",
                                 params={"subs": "1", "test": names.ops_cancel("fleet-probe")})).json()
        f["cancel_subscribers"] = subsz["total"]
        stats0 = [await c.ask("stats") for c in p.children]
        replies: list[float] = []
        async with Window(p, self.js) as w:
            for i in range(args.cancels):
                t0 = time.perf_counter()
                msg = await nc.request(names.ops_cancel(f"nobody-runs-{i}"), b'{"reason": "bench"}', timeout=10)
                replies.append(time.perf_counter() - t0)
                assert not decode(CancelReply, msg.data).accepted
        stats1 = [await c.ask("stats") for c in p.children]
        delivered = sum(b["in_msgs"] - a["in_msgs"] for a, b in zip(stats0, stats1, strict=True))
        # What idling costs meanwhile (heartbeats, pull requests) is taken off, when it was measured.
        idle = {k: self.idle_per_s.get(k, 0.0) * w.elapsed for k in w.cpu_s}
        f["cancel_expired"] = w.expired
        f["cancel_out_msgs"] = w.out_msgs / args.cancels
        f["cancel_worker_msgs"] = delivered / args.cancels
        for key, name in (("nats", "nats-server"), ("workers", "workers"), ("coord", "coordinator")):
            f[f"cancel_cpu_{key}"] = max(0.0, w.cpu_s[name] - idle[name]) * 1e6 / args.cancels
        print(f"  3. cancel: a request on ops.<id>.cancel matches {f['cancel_subscribers']:.0f} subscriptions")
        print(f"    {args.cancels} requests for ids nobody runs: {f['cancel_out_msgs']:.0f} messages out of "
              f"nats-server per request, {f['cancel_worker_msgs']:.0f} delivered to workers; CPU per request "
              f"beyond idling (µs): nats-server {f['cancel_cpu_nats']:.0f}, workers {f['cancel_cpu_workers']:.0f}, "
              f"coordinator {f['cancel_cpu_coord']:.0f}")
        f["cancel_unknown_p50"], _ = timing("reply (the coordinator's: unknown op)", replies)
        running_reply: list[float] = []
        for i in range(args.running_cancels):
            op_id = f"cancel-{i}"
            running = self.watch.wait_record(op_id, lambda o: o.status == "running")
            await submit(nc, op_id, {"duration": 60, "steps": 60})
            await asyncio.wait_for(running, 30)
            cancelled = self.watch.wait_record(op_id, lambda o: o.status == "cancelled")
            t0 = time.perf_counter()
            msg = await nc.request(names.ops_cancel(op_id), b'{"reason": "bench"}', timeout=10)
            running_reply.append(time.perf_counter() - t0)
            assert decode(CancelReply, msg.data).accepted
            await asyncio.wait_for(cancelled, 30)
        if running_reply:
            f["cancel_running_p50"], _ = timing("reply (the worker's: a running op)", running_reply)
        await asyncio.sleep(2 * args.heartbeat_s)  # the lease changes of the cancels are written

    async def dispatch(self) -> None:
        f, args = self.f, self.args
        await dispatch_round(self.nc, self.watch, "warm", min(200, args.ops))
        async with Window(self.p, self.js) as w:
            await dispatch_round(self.nc, self.watch, "tp", args.ops)
        f["ops_s"] = args.ops / w.elapsed
        f["ops_expired"] = w.expired
        heartbeats = self.n * w.elapsed / args.heartbeat_s
        f["op_cpu_coord"] = w.cpu_s["coordinator"] * 1e6 / args.ops
        f["op_cpu_nats"] = w.cpu_s["nats-server"] * 1e6 / args.ops
        f["op_cpu_workers"] = w.cpu_s["workers"] * 1e6 / args.ops
        f["op_lease_writes"] = max(0.0, w.lease_writes - heartbeats) / args.ops
        f["op_msgs"] = (w.in_msgs + w.out_msgs) / args.ops
        print(f"  4. dispatch, {args.ops} zero-duration ops through the NATS service: {f['ops_s']:,.0f} ops/s "
              f"({w.elapsed:.2f} s)")
        print(f"    CPU per op (µs): coordinator {f['op_cpu_coord']:.0f}, nats-server {f['op_cpu_nats']:.0f}, "
              f"simulated workers {f['op_cpu_workers']:.0f}; nats-server messages per op {f['op_msgs']:.1f}; "
              f"lease writes per op beyond the heartbeats {f['op_lease_writes']:.2f}")

    async def sweep_cancel(self) -> None:
        """A sweep of ``--sweep-blocks`` blocks, none started (no simulated worker serves backtest.cpu), cancelled:
        the coordinator cancels every block through ``ops.<block>.cancel``."""
        f, p, args = self.f, self.p, self.args
        blocks = args.sweep_blocks
        body = {"strategy": "sma_crossover", "symbol": "BENCH", "timeframe": "1h", "block_size": 1,
                "grid": {"fast": [5], "slow": list(range(20, 20 + blocks))}, "full_results": 0}
        # Admission refuses a sweep on bars that are not stored: a few, published as a client would.
        from ktrdr.data import DataStore, synth
        from ktrdr.data.shared import publish_dataset

        store = DataStore(root=Path(tempfile.mkdtemp(prefix="ktrdr-fleet-data-")))
        store.save("BENCH", "1h", synth("BENCH", "1h", "2020-01-01", 500, seed=1))
        await publish_dataset(self.js, store, "BENCH", "1h")
        r = await p.api.post("/api/v1/backtests/sweeps", json=body)
        r.raise_for_status()
        sweep_id = r.json()["op_id"]
        children: list[str] = []
        t0 = time.perf_counter()
        deadline = time.monotonic() + 60  # pushed back while blocks keep coming
        while len(children) < blocks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = [o["op_id"] for o in await all_children(p.api, sweep_id) if o["status"] == "pending"]
            if len(now) > len(children):
                deadline = time.monotonic() + 60
            children = now
        assert len(children) == blocks, (len(children), blocks)
        queued_s = time.perf_counter() - t0
        done = [self.watch.wait_record(c, lambda o: o.status == "cancelled") for c in children]
        async with Window(p, self.js) as w:
            reply = await self.nc.request(names.ops_cancel(sweep_id), b'{"reason": "bench"}', timeout=10)
            assert decode(CancelReply, reply.data).accepted
            _, late = await asyncio.wait(done, timeout=args.sweep_timeout_s)
        idle = {k: self.idle_per_s.get(k, 0.0) * w.elapsed for k in w.cpu_s}
        f["sweep_cancel_s"] = w.elapsed
        f["sweep_cancel_left"] = len(late)
        f["sweep_cancel_expired"] = w.expired
        if late:
            print(f"    !! {len(late)} of the {blocks} blocks not cancelled after {args.sweep_timeout_s:g} s")
        f["sweep_cancel_msgs"] = w.out_msgs / blocks
        f["sweep_cancel_cpu_nats"] = max(0.0, w.cpu_s["nats-server"] - idle["nats-server"]) * 1e3
        f["sweep_cancel_cpu_workers"] = max(0.0, w.cpu_s["workers"] - idle["workers"]) * 1e3
        f["sweep_cancel_cpu_coord"] = max(0.0, w.cpu_s["coordinator"] - idle["coordinator"]) * 1e3
        print(f"  6. a sweep of {blocks} blocks, queued in {queued_s:.1f} s, cancelled: "
              + (f"{len(late)} blocks left after" if late else "every block cancelled after")
              + f" {f['sweep_cancel_s'] * 1000:.0f} ms; nats-server messages out per block "
              f"{f['sweep_cancel_msgs']:.1f}; CPU beyond idling (ms): nats-server {f['sweep_cancel_cpu_nats']:.0f}, "
              f"workers {f['sweep_cancel_cpu_workers']:.0f}, coordinator {f['sweep_cancel_cpu_coord']:.0f}")

    async def expiry(self) -> None:
        gone = await expiries(self.p, await self.js.key_value(names.WORKERS_BUCKET), self.args)
        print(f"  5. lease expiry (TTL {LEASE_TTL:g} s, heartbeat every {self.args.heartbeat_s:g} s): the coordinator "
              "marks the worker gone")
        f = self.f
        f["expiry_hb_p50"], f["expiry_hb_p99"] = timing("after its last heartbeat", [g[0] for g in gone], unit="s")
        f["expiry_kill_p50"], f["expiry_kill_p99"] = timing("after the kill", [g[1] for g in gone], unit="s")


async def measure(n: int, setup: Setup, home: Path, args: argparse.Namespace,
                  tree: tuple[str, Path]) -> dict[str, float]:
    p = Platform(setup, home, n, args, tree[1])
    print(f"\n=== N = {n} workers ({min(args.procs, n)} simulating process(es))"
          + (f", {tree[0]} ({tree[1]})" if len(args.tree) > 1 else "") + f"; load average {load()} ===")
    nc = feeder = watcher = None
    try:
        took = await p.start()
        print(f"  fleet up and registered in {took:.1f} s")
        nc = await nats.connect(setup.url, **setup.connect)
        js = nc.jetstream()
        watch = Watch()
        watcher = await (await js.key_value(names.OPS_BUCKET)).watchall()

        async def feed() -> None:
            async for entry in watcher:
                if entry is not None and entry.value and (record := light_record(entry.value)) is not None:
                    watch.on_record(record)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(args.settle_s)
        bench = Bench(p, nc, js, watch, args)
        phases = [bench.idle, bench.page, bench.listing, bench.cancels, bench.sweep_cancel, bench.dispatch,
                  bench.expiry]
        for number, phase in enumerate(phases):
            if "1123645"[number] in args.phases:
                await phase()
        return bench.f
    except BaseException:
        print(f"  logs kept in {home}", file=sys.stderr)
        raise
    finally:
        if feeder is not None:
            feeder.cancel()
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await p.stop()


async def submit(nc: Any, op_id: str, params: dict[str, Any]) -> None:
    body = json.dumps({"type": "dummy", "op_id": op_id, "params": params}).encode()
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", body, timeout=10)
    assert not reply.headers, (reply.headers, reply.data)


async def dispatch_round(nc: Any, watch: Watch, prefix: str, count: int) -> None:
    ids = [f"{prefix}-{i}" for i in range(count)]
    done = [watch.wait_record(op_id, lambda o: o.status == "completed") for op_id in ids]
    service = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"

    async def submit_all(mine: list[str]) -> None:
        for op_id in mine:
            body = b'{"type": "dummy", "op_id": "%s", "params": {"duration": 0, "steps": 1}}' % op_id.encode()
            reply = await nc.request(service, body, timeout=10)
            assert not reply.headers, reply.headers

    await asyncio.gather(*(submit_all(ids[i::32]) for i in range(32)))
    await asyncio.wait_for(asyncio.gather(*done), 300)


async def expiries(p: Platform, workers_bucket: Any, args: argparse.Namespace) -> list[tuple[float, float]]:
    """Kill ``--kills`` workers, at most a tenth of the fleet at once, staggered over a heartbeat; returns
    (seconds from the last heartbeat, seconds from the kill) until the coordinator's log says each is gone."""
    victims = [c.ids[i] for i in range(args.kills) for c in p.children if i < len(c.ids)][:args.kills]
    at_once = max(1, min(len(victims), p.n // 10))
    owner = {wid: c for c in p.children for wid in c.ids}
    out: list[tuple[float, float]] = []
    for start in range(0, len(victims), at_once):
        batch = victims[start:start + at_once]
        killed: dict[str, tuple[float, float]] = {}
        since = p.log.stat().st_size
        for i, wid in enumerate(batch):
            await asyncio.sleep(args.heartbeat_s / len(batch) if i else 0.0)
            answer = await owner[wid].ask(f"kill {wid}")
            await asyncio.sleep(0.05)  # a heartbeat in flight when it closed is stored by now
            entry = await workers_bucket.get(names.lease_key(answer["host"], wid))
            last = decode(WorkerLease, entry.value).heartbeat_at.timestamp()
            killed[wid] = (last, answer["at"])
        seen = await gone_lines(p.log, set(killed), timeout=LEASE_TTL + 15, since=since)
        for wid, (last, at) in killed.items():
            out.append((seen[wid] - last, seen[wid] - at))
    return out


async def gone_lines(log: Path, ids: set[str], *, timeout: float, since: int) -> dict[str, float]:
    """When the coordinator logged each worker of ``ids`` gone (lease expired) after the log's first
    ``since`` bytes, as a Unix time."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            m = GONE.match(line)
            if m and m.group(2) in ids and m.group(2) not in seen:
                seen[m.group(2)] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if len(seen) == len(ids):
            return seen
        await asyncio.sleep(0.1)
    raise SystemExit(f"the coordinator did not mark {sorted(ids - set(seen))} gone in {timeout:g} s; see {log}")


# Figures for the summary: key, label, format.
SUMMARY = [
    ("idle_coord_cpu", "idle: coordinator CPU (ms per s)", ".1f"),
    ("coord_rss", "idle: coordinator RSS (MB)", ".0f"),
    ("idle_nats_cpu", "idle: nats-server CPU (ms per s)", ".1f"),
    ("nats_rss", "idle: nats-server RSS (MB)", ".0f"),
    ("idle_workers_cpu", "idle: simulated workers' CPU (ms per s)", ".1f"),
    ("idle_lease_writes", "idle: lease writes per s", ".0f"),
    ("idle_in_msgs", "idle: nats-server messages in per s", ".0f"),
    ("idle_out_msgs", "idle: nats-server messages out per s", ".0f"),
    ("coord_per_worker", "idle: coordinator CPU per added worker (µs per s)", ".0f"),
    ("nats_per_worker", "idle: nats-server CPU per added worker (µs per s)", ".0f"),
    ("workers_per_worker", "idle: a simulated worker's own CPU (µs per s)", ".0f"),
    ("connections", "nats-server connections", ".0f"),
    ("subscriptions", "nats-server subscriptions", ".0f"),
    ("page_coord_cpu", "one dashboard page: coordinator CPU (ms per s)", ".1f"),
    ("page_kb_s", "one dashboard page: KiB per s pushed to it", ".1f"),
    ("list_client_p50", "AsyncClient.workers(), p50 (ms)", ".1f"),
    ("list_api_p50", "GET /api/v1/workers, p50 (ms)", ".1f"),
    ("list_api_kib", "GET /api/v1/workers, size (KiB)", ".0f"),
    ("list_cli_p50", "`ktrdr workers` command, p50 (s)", ".2f"),
    ("cancel_subscribers", "cancel: subscriptions a request matches", ".0f"),
    ("cancel_out_msgs", "cancel: nats-server messages out per request", ".0f"),
    ("cancel_worker_msgs", "cancel: messages delivered to workers per request", ".0f"),
    ("cancel_cpu_nats", "cancel: nats-server CPU per request (µs)", ".0f"),
    ("cancel_cpu_workers", "cancel: workers' CPU per request (µs)", ".0f"),
    ("cancel_expired", "cancel: live workers marked gone meanwhile", ".0f"),
    ("cancel_unknown_p50", "cancel of an unknown id: reply p50 (ms)", ".2f"),
    ("cancel_running_p50", "cancel of a running op: reply p50 (ms)", ".2f"),
    ("sweep_cancel_s", "sweep of queued blocks cancelled: all cancelled after (s)", ".2f"),
    ("sweep_cancel_left", "sweep cancel: blocks not cancelled by then", ".0f"),
    ("sweep_cancel_expired", "sweep cancel: live workers marked gone meanwhile", ".0f"),
    ("sweep_cancel_msgs", "sweep cancel: nats-server messages out per block", ".1f"),
    ("sweep_cancel_cpu_nats", "sweep cancel: nats-server CPU (ms)", ".0f"),
    ("sweep_cancel_cpu_workers", "sweep cancel: workers' CPU (ms)", ".0f"),
    ("sweep_cancel_cpu_coord", "sweep cancel: coordinator CPU (ms)", ".0f"),
    ("ops_s", "dispatch: zero-duration ops per s", ",.0f"),
    ("ops_expired", "dispatch: live workers marked gone meanwhile", ".0f"),
    ("op_cpu_coord", "dispatch: coordinator CPU per op (µs)", ".0f"),
    ("op_cpu_nats", "dispatch: nats-server CPU per op (µs)", ".0f"),
    ("op_cpu_workers", "dispatch: workers' CPU per op (µs)", ".0f"),
    ("op_lease_writes", "dispatch: lease writes per op (beyond heartbeats)", ".2f"),
    ("op_msgs", "dispatch: nats-server messages per op", ".1f"),
    ("expiry_hb_p50", "expiry: gone after last heartbeat, p50 (s)", ".2f"),
    ("expiry_hb_p99", "expiry: gone after last heartbeat, p99 (s)", ".2f"),
    ("expiry_kill_p50", "expiry: gone after the kill, p50 (s)", ".2f"),
    ("expiry_kill_p99", "expiry: gone after the kill, p99 (s)", ".2f"),
]


def derive(results: list[tuple[int, dict[str, float]]]) -> None:
    """Figures per worker: what each worker beyond the baseline's adds, idle (µs of CPU per second)."""
    base_n, base = results[0]
    for n, figs in results[1:]:
        for key, idle in (("coord_per_worker", "idle_coord_cpu"), ("nats_per_worker", "idle_nats_cpu")):
            if idle in figs and idle in base:
                figs[key] = (figs[idle] - base[idle]) * 1000 / (n - base_n)
    for n, figs in results:
        if "idle_workers_cpu" in figs:
            figs["workers_per_worker"] = figs["idle_workers_cpu"] * 1000 / n


def table(title: str, columns: list[tuple[str, dict[str, float], dict[str, float] | None]]) -> None:
    """One line per figure, one column per (label, figures, the figures its ratio is against)."""
    print(f"\n=== {title} ===")
    print(f"{'figure':<52}" + "".join(f"{label:>22}" for label, _, _ in columns))
    for key, label, fmt in SUMMARY:
        if not any(key in figs for _, figs, _ in columns):
            continue
        cells = []
        for _, figs, against in columns:
            if key not in figs:
                cells.append(f"{'–':>22}")
                continue
            value = format(figs[key], fmt)
            ratio = f" (×{figs[key] / against[key]:.2f})" if against and against.get(key) else ""
            cells.append(f"{value + ratio:>22}")
        print(f"{label:<52}" + "".join(cells))


async def main(args: argparse.Namespace) -> None:
    sizes = [BASELINE] + [n for n in args.sizes if n != BASELINE]
    print(f"ktrdr fleet benchmark — {os.cpu_count()} cores, {datetime.now():%Y-%m-%d %H:%M}, load average "
          f"{load()}; security: {MODES[args.security][0]}; lease TTL {LEASE_TTL:g} s, heartbeat {args.heartbeat_s:g} s"
          + (f"; workers' settings: {' '.join(args.worker_env)}" if args.worker_env else ""))
    results: dict[str, list[tuple[int, dict[str, float]]]] = {label: [] for label, _ in args.tree}
    for i, n in enumerate(sizes):
        # Trees take turns, first one then the other, so that the machine's load weighs on both alike.
        for tree in args.tree if i % 2 == 0 else args.tree[::-1]:
            home = Path(tempfile.mkdtemp(prefix=f"ktrdr-fleet-{n}-"))
            setup = make_setup(args.security, home)
            try:
                results[tree[0]].append((n, await measure(n, setup, home, args, tree)))
            finally:
                setup.server.stop()
            shutil.rmtree(home, ignore_errors=True)
    for label, runs in results.items():
        derive(runs)
        base_n, base = runs[0]
        table(f"summary{f' ({label})' if len(results) > 1 else ''}: every figure by fleet size; in brackets, the "
              f"ratio to N = {base_n} (the baseline, measured in this run)",
              [(f"N={n}", figs, base if i else None) for i, (n, figs) in enumerate(runs)])
    if len(results) == 2:
        (first, a), (second, b) = results.items()
        table(f"{second} against {first}, by fleet size (in brackets: {second} / {first})",
              [c for (n, fa), (_, fb) in zip(a, b, strict=True)
               for c in ((f"{first} N={n}", fa, None), (f"{second} N={n}", fb, fa))])
    print(f"\nload average at the end: {load()}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        default=[10, 100, 500, 1000],
                        help=f"fleet sizes, comma separated (default 10,100,500,1000); N = {BASELINE} is always "
                             "measured first, as the baseline")
    parser.add_argument("--procs", type=int, default=2, help="processes the simulated workers share (default 2)")
    parser.add_argument("--security", choices=list(MODES), default="auth",
                        help="auth: credentials per role, as `ktrdr up` (default); tls: auth + TLS; none: neither")
    parser.add_argument("--ops", type=int, default=1000, help="zero-duration ops for the dispatch figure")
    parser.add_argument("--kills", type=int, default=6, help="workers killed for the lease-expiry figure")
    parser.add_argument("--idle-s", type=float, default=10.0, help="the idle measurement's length")
    parser.add_argument("--page-s", type=float, default=5.0, help="the measurement with a dashboard page")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after the fleet is up")
    parser.add_argument("--lists", type=int, default=10, help="listings of the workers timed, per way")
    parser.add_argument("--cli-runs", type=int, default=3, help="`ktrdr workers` commands timed")
    parser.add_argument("--cancels", type=int, default=200, help="cancel requests for unknown ids")
    parser.add_argument("--running-cancels", type=int, default=5, help="cancels of running ops")
    parser.add_argument("--phases", default="123456",
                        help="which measurements: 1 idle (and a dashboard page), 2 listing, 3 cancel, 4 dispatch, "
                             "5 lease expiry, 6 a sweep's cancel (default all)")
    parser.add_argument("--sweep-blocks", type=int, default=200, help="queued blocks of the cancelled sweep")
    parser.add_argument("--sweep-timeout-s", type=float, default=60.0,
                        help="how long the sweep's cancel may take before the blocks left are counted")
    parser.add_argument("--heartbeat-s", type=float, default=1.0,
                        help="the workers' heartbeat (KTRDR_HEARTBEAT_S; default 1, the runtime's)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KTRDR_X=VALUE",
                        help="a setting for the simulated workers, e.g. KTRDR_FETCH_TIMEOUT_S=30 (repeatable)")
    parser.add_argument("--tree", action="append", type=tree_arg, metavar="LABEL=DIR",
                        help="run the coordinator and the simulated workers from DIR's code (a copy of the repo); "
                             "give two to compare them, size by size, in one run (default: this checkout)")
    parser.add_argument("--child", nargs=2, type=int, metavar=("FIRST", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tree = args.tree or [("this tree", ROOT)]
    return args


def tree_arg(text: str) -> tuple[str, Path]:
    label, _, where = text.partition("=")
    path = Path(where or label).resolve()
    if not (path / "coordinator").is_dir():
        raise argparse.ArgumentTypeError(f"{path} holds no coordinator package: not a copy of the repo")
    return (label if where else path.name), path


if __name__ == "__main__":
    from ktrdr.runtime.loop import run

    arguments = parse()
    if arguments.child:
        run(child(*arguments.child))
    else:
        run(main(arguments))
