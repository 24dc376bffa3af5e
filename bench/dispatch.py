"""Dispatch benchmark through the whole stack (prints figures; not a test).

Starts its own nats-server (file storage), a coordinator with the status API and two worker
processes, then measures:
  1. sequential zero-duration dummy ops submitted through the HTTP API: submit -> completed
     seen by the client, both as the worker's `completed` event and as the durable op record;
  2. throughput with 2 workers and 2,000 ops, through the HTTP API and through the NATS service,
     with the CPU each process spent per op and the messages nats-server handled per op;
  3. progress latency: worker publish -> a subscriber, and -> the op record the API serves;
  4. cancel: reply latency, and time until the op record says cancelled;
  5. kill -9 of the worker running an op -> the op re-dispatched (attempt 2 offered) and running.

--security picks what the NATS connections carry (every process connects with its role's credential
and env, as under `ktrdr up`): `auth` (the default, what `ktrdr up` runs on loopback: an nkey
credential per role, roles enforced by nats-server, plain TCP), `tls` (the same over TLS from the
fleet's own CA, as with `ktrdr up --listen`), `none` (no credential, no TLS: a bare nats-server), or
`compare`: `none` and `tls` run alternately (none, tls, none, tls, ... for --rounds rounds), each on a
fresh platform, then a table gives every figure for both and the ratio (target: no more than 10 %
lost to auth + TLS).

Before ktrdr's phases, the same invocation measures two baselines on the same machine (bench/baselines.py
says exactly what each does): `floor`, a bare JetStream work queue (2 worker processes, ack, a result
in a KV bucket), and `celery`, Celery 5 on Redis with acks_late (needs `pip install -e '.[bench]'` and
Debian's redis-server; skipped with the reason otherwise). A table at the end gives every ktrdr figure
beside both and as a ratio of each, with the issue's targets: throughput >= 0.5x the floor's and >= 3x
Celery's, sequential durable-record p50 <= 2x the floor's, coordinator CPU per op <= 200 µs.
`--baselines none` skips them; `--baselines floor` runs only the floor.

    python bench/dispatch.py [--ops 500] [--throughput-ops 2000] [--slots 1] [--phases 12345]
                             [--security none|auth|tls|compare] [--rounds N]
                             [--baselines floor,celery|floor|celery|none] [--celery-pool solo|prefork]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

import nats
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.security.fleet import provision
from subjects import names, roles
from subjects.models import CancelReply, Operation, OpEvent, ProgressUpdate, decode

ROOT = Path(__file__).resolve().parent.parent
LEASE_TTL = 5.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int, part: str = "both") -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    ticks = {"both": user + system, "user": user, "system": system}[part]
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuUsage:
    """CPU each process spent from now on, per op: where the two cores went."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.start = {name: (cpu_seconds(pid), cpu_seconds(pid, "system")) for name, pid in self.pids.items()}

    def per_op_us(self, n: int) -> dict[str, tuple[float, float]]:
        """µs of CPU per op by process: (user + kernel, kernel)."""
        out = {}
        for name, pid in self.pids.items():
            both, system = cpu_seconds(pid) - self.start[name][0], cpu_seconds(pid, "system") - self.start[name][1]
            out[name] = (both * 1e6 / n, system * 1e6 / n)
        return out

    @staticmethod
    def describe(per_op: dict[str, tuple[float, float]]) -> str:
        parts = [f"{name} {both:.0f} ({system:.0f} kernel)" for name, (both, system) in per_op.items()]
        return f"{sum(both for both, _ in per_op.values()):.0f} µs: " + ", ".join(parts)


def report(name: str, values_s: list[float]) -> tuple[float, float]:
    """Prints a latency line; returns its p50 and p99 in ms."""
    ms = [v * 1000 for v in values_s]
    p50, p99 = pct(ms, 50), pct(ms, 99)
    print(f"  {name:<52} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   (n={len(ms)})")
    return p50, p99


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client: httpx costs more CPU than the server it measures on
    a 2-core machine, so the figures would describe the client instead of the platform."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        # Sent on every request, so built once: the API refuses a submission without them.
        self.head = (b"Host: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     % token.encode())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), self.head, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def all_children(api: httpx.AsyncClient, parent_id: str) -> list[dict[str, Any]]:
    """Every child of a parent op (a sweep's blocks and full results): the list answers in pages of
    at most 1,000 (``next_offset``)."""
    found: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = (await api.get("/api/v1/operations", params={"parent_id": parent_id, "limit": 1000,
                                                            "offset": offset})).json()
        found += page["operations"]
        offset = page.get("next_offset")
    return found


def light_record(data: bytes) -> Any:
    """The bench client reads thousands of records a second: full validation only where needed,
    so that the client's own CPU does not become the figure on a 2-core machine. None for a key of
    the bucket that is no op (the coordinator's health probe)."""
    raw = json.loads(data)
    if "op_id" not in raw:
        return None
    if raw["op_id"].startswith(("prog-", "kill-", "cancel-")):
        return decode(Operation, data)
    return SimpleNamespace(op_id=raw["op_id"], status=raw["status"], attempt=raw["attempt"],
                           worker_id=raw["worker_id"])


class Watch:
    """Push-fed views of the op records and the events, for the client side of the figures."""

    def __init__(self) -> None:
        self.records: dict[str, Operation] = {}
        self.record_waiters: dict[str, list[tuple[asyncio.Future[float], object]]] = {}
        self.event_waiters: dict[str, asyncio.Future[float]] = {}

    def wait_record(self, op_id: str, predicate: object) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.record_waiters.setdefault(op_id, []).append((fut, predicate))
        return fut

    def on_record(self, op: Operation) -> None:
        self.records[op.op_id] = op
        waiters = self.record_waiters.get(op.op_id, [])
        for fut, predicate in list(waiters):
            if not fut.done() and predicate(op):  # type: ignore[operator]
                fut.set_result(time.perf_counter())
                waiters.remove((fut, predicate))


MODES = {
    "none": ("none", "no credential, plain TCP: a bare nats-server"),
    "auth": ("auth", "an nkey credential per role, roles enforced by nats-server, plain TCP (`ktrdr up`)"),
    "tls": ("auth+TLS", "credentials per role over TLS from the fleet's CA (`ktrdr up --listen`)"),
}


@dataclass(frozen=True, kw_only=True)
class Setup:
    """A running nats-server of one security mode, and how each party connects to it."""

    mode: str
    server: NatsServer
    url: str
    role_env: Callable[[str], dict[str, str]]  # what a child process of a role connects with
    connect: dict[str, Any]  # nats.connect options of the bench's own client (BENCH_CLIENT_ROLE)


# The bench submits and follows progress as a user would, and watches the `ops` bucket (a consumer,
# which only the coordinator and the operator may make): it holds the operator's key.
BENCH_CLIENT_ROLE = roles.OPERATOR


def make_setup(mode: str, home: Path) -> Setup:
    """``home`` is the platform's KTRDR_HOME: the credentials and TLS files go where `ktrdr up` puts them."""
    if mode == "none":
        server = NatsServer(store_dir=home / "nats", http_port=0).start()
        return Setup(mode=mode, server=server, url=server.url, role_env=lambda role: {}, connect={})
    fleet = provision(home, tls=mode == "tls")  # the certificate covers 127.0.0.1
    server = NatsServer(store_dir=home / "nats", http_port=0, config_file=fleet.config).start()
    ca = fleet.tls.ca if fleet.tls is not None else None
    auth = NatsAuth(credential=fleet.credentials[BENCH_CLIENT_ROLE],
                    credential_file=fleet.credential_file(BENCH_CLIENT_ROLE), ca=ca)
    url = f"tls://127.0.0.1:{server.port}" if ca is not None else server.url
    return Setup(mode=mode, server=server, url=url, role_env=fleet.env, connect=auth.options())


# The figures a run returns, in the comparison table's order: key, label, format, whether more is better.
FIGURES = [
    ("seq_event_p50", "1. sequential: completed event, p50 (ms)", ".2f", False),
    ("seq_event_p99", "   completed event, p99 (ms)", ".2f", False),
    ("seq_record_p50", "   completed op record, p50 (ms)", ".2f", False),
    ("seq_record_p99", "   completed op record, p99 (ms)", ".2f", False),
    ("http_ops", "2. throughput through the HTTP API (ops/s)", ",.0f", True),
    ("http_cpu", "   CPU per op, all processes (µs)", ".0f", False),
    ("http_cpu_nats", "   of which nats-server (µs)", ".0f", False),
    ("http_cpu_coordinator", "   of which the coordinator (µs)", ".0f", False),
    ("http_cpu_workers", "   of which the two workers (µs)", ".0f", False),
    ("http_cpu_client", "   of which the bench client (µs)", ".0f", False),
    ("nats_ops", "   throughput through the NATS service (ops/s)", ",.0f", True),
    ("nats_cpu", "   CPU per op, all processes (µs)", ".0f", False),
    ("progress_sub_p50", "3. progress -> subscriber, p50 (ms)", ".2f", False),
    ("progress_rec_p50", "   progress -> op record, p50 (ms)", ".2f", False),
    ("cancel_reply_p50", "4. cancel: reply, p50 (ms)", ".2f", False),
    ("cancel_done_p50", "   cancel: op record cancelled, p50 (ms)", ".2f", False),
    ("kill_offered_p50", "5. kill -9 -> re-dispatched, p50 (s)", ".2f", False),
    ("kill_running_p50", "   kill -9 -> running again, p50 (s)", ".2f", False),
]
TARGET_LOSS = 0.10  # throughput auth + TLS may cost, at most


def cpu_figures(prefix: str, per_op: dict[str, tuple[float, float]]) -> dict[str, float]:
    workers = sum(both for name, (both, _) in per_op.items() if name.startswith("worker"))
    return {prefix: sum(both for both, _ in per_op.values()), f"{prefix}_nats": per_op["nats-server"][0],
            f"{prefix}_coordinator": per_op["coordinator"][0], f"{prefix}_workers": workers,
            f"{prefix}_client": per_op["bench client"][0]}


async def run_platform(setup: Setup, home: Path, args: argparse.Namespace) -> dict[str, float]:
    """Starts a coordinator and two workers on ``setup``'s server, runs the phases, stops them."""
    figures: dict[str, float] = {}
    server = setup.server
    api_port = free_port()
    # Only the setup's own credentials: none from the caller's environment.
    inherited = {k: v for k, v in os.environ.items() if k not in ("KTRDR_NATS_CREDS", "KTRDR_NATS_CA")}
    env = {**inherited, "KTRDR_NATS_URL": setup.url, "KTRDR_API_PORT": str(api_port), "KTRDR_LOG_LEVEL": "WARNING",
           "KTRDR_LEASE_TTL_S": str(LEASE_TTL), "KTRDR_HOME": str(home), "KTRDR_SLOTS": str(args.slots)}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, module: str, role: str, **extra: str) -> None:
        log = open(home / f"{name}.log", "ab")  # noqa: SIM115
        procs[name] = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT,
                                       env={**env, **setup.role_env(role), **extra},
                                       stdout=log, stderr=subprocess.STDOUT)

    def start_worker(index: int) -> None:
        start(f"worker{index}", "worker_backtest", roles.WORKER, KTRDR_WORKER_INDEX=str(index),
              KTRDR_WORKER_ID=f"bench-w{index}")

    token = secrets.token_urlsafe(32)
    start("coordinator", "coordinator", roles.COORDINATOR, KTRDR_API_TOKEN=token)
    for i in range(2):
        start_worker(i)
    nc = await nats.connect(setup.url, **setup.connect)
    js = nc.jetstream()
    watch = Watch()
    watcher: Any = None
    feeder: asyncio.Task[None] | None = None
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
    raw = RawHttp(api_port, token)
    try:
        for _ in range(200):
            try:
                if (await api.get("/health")).json()["workers"] == 2:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"platform did not come up; see the logs in {home}")
        # The coordinator made the streams and buckets (only it may create them): the client binds to them.
        ops_bucket = await js.key_value(names.OPS_BUCKET)
        watcher = await ops_bucket.watchall()

        async def feed() -> None:
            async for entry in watcher:
                if entry is not None and entry.value and (record := light_record(entry.value)) is not None:
                    watch.on_record(record)

        feeder = asyncio.create_task(feed())

        async def on_event(msg: nats.aio.msg.Msg) -> None:
            fut = watch.event_waiters.get(names.op_id_from_subject(msg.subject))
            if fut is None or fut.done():
                return
            event = decode(OpEvent, msg.data)
            if event.event == "completed":
                fut.set_result(time.perf_counter())

        # Only the sequential figures need every event; the throughput run is measured on the records.
        events_sub = await nc.subscribe(names.OPS_EVENTS_ALL, cb=on_event)
        label, description = MODES[setup.mode]
        print(f"ktrdr dispatch benchmark — {os.cpu_count()} cores, nats-server file storage, "
              f"coordinator + API + 2 worker processes with {args.slots} slot(s) each\n"
              f"security: {label} ({description})\n")

        if "1" in args.phases:
            # 1. sequential
            seen_event: list[float] = []
            seen_record: list[float] = []
            for i in range(args.ops + 20):
                op_id = f"seq-{i}"
                done_record = watch.wait_record(op_id, lambda o: o.status == "completed")
                done_event: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                watch.event_waiters[op_id] = done_event
                body = b'{"type": "dummy", "op_id": "%s", "params": {"duration": 0, "steps": 1}}' % op_id.encode()
                t0 = time.perf_counter()
                status, _ = await raw.post("/api/v1/operations", body)
                assert status == 201, status
                t_event = await asyncio.wait_for(done_event, 10)
                t_record = await asyncio.wait_for(done_record, 10)
                if i >= 20:  # warm-up excluded
                    seen_event.append(t_event - t0)
                    seen_record.append(t_record - t0)
            print("1. sequential zero-duration ops through the API (submit -> completed seen by the client)")
            figures["seq_event_p50"], figures["seq_event_p99"] = report(
                "completed event (worker -> OPS stream -> client)", seen_event)
            figures["seq_record_p50"], figures["seq_record_p99"] = report(
                "completed op record (coordinator's durable write)", seen_record)
        await events_sub.unsubscribe()

        if "2" in args.phases:
            # 2. throughput
            n = args.throughput_ops
            ids = [f"tp-{i}" for i in range(n)]
            futures = [watch.wait_record(op_id, lambda o: o.status == "completed") for op_id in ids]
            clients = [RawHttp(api_port, token) for _ in range(32)]

            async def post_all(client: RawHttp, mine: list[str]) -> None:
                for op_id in mine:
                    body = b'{"type": "dummy", "op_id": "%s", "params": {"duration": 0, "steps": 1}}' % op_id.encode()
                    status, _ = await client.post("/api/v1/operations", body)
                    assert status == 201, status

            pids = {"nats-server": server.pid, **{name: p.pid for name, p in procs.items()},
                    "bench client": os.getpid()}
            usage = CpuUsage(pids)
            varz0 = (await api.get(f"http://127.0.0.1:{server.http_port}/varz")).json()
            writes0 = (await js.stream_info(names.kv_stream(names.OPS_BUCKET))).state.last_seq
            t0 = time.perf_counter()
            await asyncio.gather(*(post_all(c, ids[i::len(clients)]) for i, c in enumerate(clients)))
            t_submitted = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*futures), 300)
            elapsed = time.perf_counter() - t0
            http_usage = usage.per_op_us(n)
            for client in clients:
                client.close()
            varz1 = (await api.get(f"http://127.0.0.1:{server.http_port}/varz")).json()
            writes = ((await js.stream_info(names.kv_stream(names.OPS_BUCKET))).state.last_seq - writes0) / n
            print(f"\n2. throughput, 2 workers, {n} ops")
            figures["http_ops"] = n / elapsed
            figures |= cpu_figures("http_cpu", http_usage)
            print(f"  through the HTTP API (32 keep-alive clients): {n / elapsed:,.0f} ops/s completed "
                  f"({elapsed:.2f} s; all submitted after {t_submitted - t0:.2f} s)")
            print(f"    CPU per op: {CpuUsage.describe(http_usage)}")
            print(f"  nats-server messages per op: {(varz1['in_msgs'] - varz0['in_msgs']) / n:.1f} in, "
                  f"{(varz1['out_msgs'] - varz0['out_msgs']) / n:.1f} out; op record writes per op: {writes:.2f}")
            ids = [f"tpn-{i}" for i in range(n)]
            futures = [watch.wait_record(op_id, lambda o: o.status == "completed") for op_id in ids]
            service = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"

            async def submit_nats(mine: list[str]) -> None:
                for op_id in mine:
                    body = b'{"type": "dummy", "op_id": "%s", "params": {"duration": 0, "steps": 1}}' % op_id.encode()
                    reply = await nc.request(service, body, timeout=10)
                    assert not reply.headers, reply.headers

            usage = CpuUsage(pids)
            t0 = time.perf_counter()
            await asyncio.gather(*(submit_nats(ids[i::32]) for i in range(32)))
            t_submitted = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*futures), 300)
            elapsed = time.perf_counter() - t0
            nats_usage = usage.per_op_us(n)
            figures["nats_ops"] = n / elapsed
            figures |= cpu_figures("nats_cpu", nats_usage)  # the coordinator's share has a target
            print(f"  through the NATS service {service} (32 concurrent): {n / elapsed:,.0f} ops/s completed "
                  f"({elapsed:.2f} s; all submitted after {t_submitted - t0:.2f} s)")
            print(f"    CPU per op: {CpuUsage.describe(nats_usage)}")

        if "3" in args.phases:
            # 3. progress latency
            sub_lat: list[float] = []
            rec_lat: list[float] = []
            got: asyncio.Queue[tuple[ProgressUpdate, float]] = asyncio.Queue()

            async def on_progress(msg: nats.aio.msg.Msg) -> None:
                await got.put((decode(ProgressUpdate, msg.data), time.time()))

            psub = await nc.subscribe(names.OPS_PROGRESS_ALL, cb=on_progress)
            last_rec: dict[str, datetime] = {}

            def record_progress(op: Operation) -> None:
                if op.progress and op.op_id.startswith("prog-") and last_rec.get(op.op_id) != op.progress.timestamp:
                    last_rec[op.op_id] = op.progress.timestamp
                    rec_lat.append(time.time() - op.progress.timestamp.timestamp())

            original = watch.on_record
            watch.on_record = lambda op: (record_progress(op), original(op))  # type: ignore[method-assign]
            op_id = "prog-1"
            done = watch.wait_record(op_id, lambda o: o.status == "completed")
            await api.post("/api/v1/operations", json={"type": "dummy", "op_id": op_id,
                                                       "params": {"duration": 6, "steps": 60}})
            await asyncio.wait_for(done, 30)
            watch.on_record = original  # type: ignore[method-assign]
            await psub.unsubscribe()
            while not got.empty():
                update, at = got.get_nowait()
                sub_lat.append(at - update.timestamp.timestamp())
            print("\n3. progress latency (worker creates the update -> visible)")
            figures["progress_sub_p50"] = report("to a subscriber of ops.<id>.progress", sub_lat)[0]
            figures["progress_rec_p50"] = report("in the op record the API serves", rec_lat)[0]

        if "4" in args.phases:
            # 4. cancel
            reply_lat: list[float] = []
            cancelled_lat: list[float] = []
            for i in range(20):
                op_id = f"cancel-{i}"
                running = watch.wait_record(op_id, lambda o: o.status == "running")
                await submit_with_id(api, op_id, {"duration": 60, "steps": 600})
                await asyncio.wait_for(running, 10)
                cancelled = watch.wait_record(op_id, lambda o: o.status == "cancelled")
                t0 = time.perf_counter()
                msg = await nc.request(names.ops_cancel(op_id), b'{"reason": "bench"}', timeout=5)
                t_reply = time.perf_counter()
                assert decode(CancelReply, msg.data).accepted
                t_done = await asyncio.wait_for(cancelled, 10)
                reply_lat.append(t_reply - t0)
                cancelled_lat.append(t_done - t0)
            print("\n4. cancel of a running op (nats req ops.<id>.cancel)")
            figures["cancel_reply_p50"] = report("reply received", reply_lat)[0]
            figures["cancel_done_p50"] = report("op record says cancelled", cancelled_lat)[0]

        if "5" in args.phases:
            # 5. kill -9 -> re-dispatch
            redispatch: list[float] = []
            rerun: list[float] = []
            for i in range(args.kills):
                op_id = f"kill-{i}"
                running = watch.wait_record(op_id, lambda o: o.status == "running")
                await submit_with_id(api, op_id, {"duration": 30, "steps": 30})
                await asyncio.wait_for(running, 10)
                # Worker i runs as bench-w<i> (start_worker): its process, without reading its lease.
                owner = watch.records[op_id].worker_id or ""
                name = f"worker{owner.removeprefix('bench-w')}"
                offered = watch.wait_record(op_id, lambda o: o.attempt == 2)
                restarted = watch.wait_record(op_id, lambda o: o.attempt == 2 and o.status == "running")
                t0 = time.perf_counter()
                os.kill(procs[name].pid, signal.SIGKILL)
                redispatch.append(await asyncio.wait_for(offered, 30) - t0)
                rerun.append(await asyncio.wait_for(restarted, 30) - t0)
                procs[name].wait()
                start_worker(int(name[-1]))
                await nc.request(names.ops_cancel(op_id), b"{}", timeout=5)
                await asyncio.sleep(1.0)
            print(f"\n5. kill -9 of the worker running an op (lease TTL {LEASE_TTL:g} s)")
            # In seconds: the ms of report() / 1000.
            figures["kill_offered_p50"] = report("kill -> attempt 2 offered (re-dispatched)", redispatch)[0] / 1000
            figures["kill_running_p50"] = report("kill -> attempt 2 running on the other worker", rerun)[0] / 1000
    finally:
        await api.aclose()
        raw.close()
        if feeder is not None:
            feeder.cancel()
        await nc.close()
        from baselines import stop_all  # the baselines' processes stop the same way

        stop_all(procs.values())
    return figures


def compare(runs: list[tuple[str, dict[str, float]]], base: str, other: str) -> None:
    """Every figure of both modes, run by run, and the ratio of their means (``other`` / ``base``)."""
    a_label, b_label = MODES[base][0], MODES[other][0]
    rounds = sum(1 for mode, _ in runs if mode == base)
    print(f"\n=== {a_label} vs {b_label}: {rounds} run(s) each, alternating; values run by run ===")
    print(f"ratio: {b_label} / {a_label}, of the means; lost: throughput lost, or time and CPU added, by {b_label} "
          "(negative: it did better)")
    print(f"{'figure':<48} {a_label:>22} {b_label:>22} {'ratio':>7} {'lost':>7}   ratio by round")
    losses: dict[str, float] = {}
    for key, label, fmt, more_is_better in FIGURES:
        a = [figs[key] for mode, figs in runs if mode == base and key in figs]
        b = [figs[key] for mode, figs in runs if mode == other and key in figs]
        if not a or not b:
            continue
        ratio = statistics.mean(b) / statistics.mean(a)
        # What the secure mode costs: less throughput, or more time and CPU. Negative: it did better.
        lost = (1 - ratio) if more_is_better else (ratio - 1)
        if more_is_better:
            losses[key.removesuffix("_ops").upper()] = lost
        by_round = " ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=False))
        print(f"{label:<48} {' '.join(format(v, fmt) for v in a):>22} {' '.join(format(v, fmt) for v in b):>22} "
              f"{ratio:7.2f} {lost * 100:+6.1f}%   {by_round}")
    if losses:
        verdict = "within" if max(losses.values()) <= TARGET_LOSS else "OVER"
        print(f"\nthroughput lost to {b_label}: " + ", ".join(f"{k} {v * 100:+.1f} %" for k, v in losses.items())
              + f" (means over the rounds) — {verdict} the target of {TARGET_LOSS:.0%}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--throughput-ops", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--slots", type=int, default=1, help="slots per worker (KTRDR_SLOTS)")
    parser.add_argument("--phases", default="12345", help="which of the five measurements to run")
    parser.add_argument("--security", choices=[*MODES, "compare"], default="auth",
                        help="auth: credentials per role, as `ktrdr up` (default); tls: auth + TLS; none: neither; "
                             "compare: none and tls alternately, then a table of both")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs of each mode (default: 2 with --security compare, else 1)")
    parser.add_argument("--baselines", default="floor,celery",
                        help="baselines measured before ktrdr in the same run: floor, celery (comma-separated), "
                             "or none")
    parser.add_argument("--celery-pool", choices=["solo", "prefork"], default="solo",
                        help="the Celery workers' pool (1 process each); solo gave Celery its best figures")
    args = parser.parse_args()
    wanted = [] if args.baselines == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    if unknown := set(wanted) - {"floor", "celery"}:
        parser.error(f"unknown baseline(s): {', '.join(sorted(unknown))}")
    # Imported here: fleet.py and sweep.py import this module and need none of it.
    import baselines

    started = datetime.now().astimezone()
    load_before = os.getloadavg()
    measured = await baselines.run_baselines(wanted, args.ops, args.throughput_ops, args.celery_pool) if wanted else []
    modes = ["none", "tls"] if args.security == "compare" else [args.security]
    rounds = args.rounds or (2 if args.security == "compare" else 1)
    runs: list[tuple[str, dict[str, float]]] = []
    for _ in range(rounds):
        for mode in modes:  # alternating, so that the machine's load weighs on every mode alike
            if len(modes) * rounds > 1:
                print(f"\n=== run {len(runs) + 1} of {len(modes) * rounds}: {MODES[mode][0]} ===")
            home = Path(tempfile.mkdtemp(prefix=f"ktrdr-bench-{mode}-"))
            setup = make_setup(mode, home)
            try:
                runs.append((mode, await run_platform(setup, home, args)))
            except BaseException:
                print(f"logs kept in {home}", file=sys.stderr)
                raise
            finally:
                setup.server.stop()
            shutil.rmtree(home, ignore_errors=True)
    if len(modes) == 2:
        compare(runs, *modes)
    if measured:
        load = " ".join(f"{x:.2f}" for x in load_before), " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n{started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} cores; load average (1, 5, 15 min) "
              f"before the baselines {load[0]}, after ktrdr's phases {load[1]}")
        for mode in modes:
            of_mode = [figs for m, figs in runs if m == mode]
            keys = set().union(*of_mode)
            means = {key: statistics.mean(figs[key] for figs in of_mode if key in figs) for key in keys}
            label = MODES[mode][0] + (f", mean of {len(of_mode)} runs" if len(of_mode) > 1 else "")
            baselines.summary(measured, means, label)


async def submit_with_id(api: httpx.AsyncClient, op_id: str, params: dict[str, object]) -> None:
    r = await api.post("/api/v1/operations", json={"type": "dummy", "op_id": op_id, "params": params})
    r.raise_for_status()


if __name__ == "__main__":
    from ktrdr.runtime.loop import run

    run(main())
