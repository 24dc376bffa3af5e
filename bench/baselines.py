"""Baselines that bench/dispatch.py measures in the same run as ktrdr, on the same machine.

A figure of ktrdr's alone says little on a shared 2-core VM whose speed changes over the day; the
same figure of two reference systems, taken minutes apart under the same load, turns it into a
ratio that holds across runs. Both baselines do what dispatch.py's phase 1 and 2 do with ktrdr:
2 worker processes, zero-payload no-op jobs, a sequential series (``seq_ops`` after 20 warm-up
jobs) and a throughput run of ``throughput_ops`` jobs.

**floor: bare JetStream work queue.** What the hardware and nats-server allow for one durable job
and one durable result, with nothing of ktrdr's in the way: a nats-server started as ktrdr starts
it (``NatsServer``: file storage, the same GOMAXPROCS), a work-queue stream ``FLOOR``, one durable
pull consumer shared by 2 worker processes (on ktrdr's loop: uvloop, the same GC tuning), and a KV
bucket ``floor-results`` (file storage).
    client:  publish the job (b"") and await the stream's ack: the job is durable
    worker:  job delivered -> ack it -> put key <stream sequence> in the results bucket
    client:  a watch of the bucket (an ordered consumer, as dispatch.py's client watches ``ops``)
             sees the key: the analogue of "the op record says completed"
That is 4 messages into nats-server and 4 out of it per job (ktrdr: 7-8 in, 10-11 out).
Each worker keeps one pull request outstanding (batch 1, 10 s expiry, as ktrdr's
``KTRDR_FETCH_TIMEOUT_S``) on a plain subscription and sends the next one right after the job's
ack and the result's publish, in the same write; the result's ack is checked when it comes rather
than awaited before the next pull. That is the technique ktrdr's workers use
(``ktrdr/runtime/pull.py``, ``publish.py``); nats-py's ``fetch(1)`` sends the same messages but adds
a future, a timer and a JSON encoding per job. Every JetStream publish (client and workers) goes
through ktrdr's own ``AckedPublisher`` (acks to one wildcard inbox, a counter for token): with stock
``js.publish`` and ``msg.ack()`` the floor spent 2.4-3x the CPU per job (one run of each,
2026-12-07), most of it in nats-py, which would have made it a floor of nats-py's client rather
than of JetStream. The floor has no coordinator, no claim, no started/outcome events and no second
record write: the gap to ktrdr is what those cost. It runs on a bare server (no credentials, no
TLS); compare with ``dispatch.py --security none`` for like with like (auth alone cost 0-5 %,
bench/README.md).

**celery: Celery 5 on Redis, acks_late.** ``redis-server`` (Debian's package) on a free port with
a temporary directory, ``--save '' --appendonly no`` (nothing on disk: this favours Celery, whose
broker forgets every queued job on a crash), as broker and result backend; 2 ``celery worker``
processes with ``--pool solo`` (the task runs in the worker's own process: the prefork pool, even
with one child, adds a pipe and a second process per task; ``--celery-pool prefork`` measures
it), ``--without-gossip --without-mingle --without-heartbeat``, the default prefetch multiplier
(4), a no-op task with ``acks_late=True`` whose ``None`` result is stored in Redis. The client
sends with ``apply_async`` from one thread and waits with ``AsyncResult.get()`` (Redis pub/sub):
"submit -> result available". Needs ``pip install -e '.[bench]'`` and ``apt-get install
redis-server``; without them the baseline is skipped, with the reason.

CPU per op is that of every process: the server (nats-server or redis-server), both workers (and
their pool children, if any) and the bench client. As a script this module is the workers:
``python bench/baselines.py floor-worker URL`` / ``celery-worker REDIS_URL NAME POOL``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatch import CpuUsage
    from nats.aio.msg import Msg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WARMUP = 20  # jobs before the sequential series, excluded as in dispatch.py's phase 1
CONCURRENCY = 32  # concurrent submitters in the throughput run, as dispatch.py's phase 2

FLOOR_STREAM = "FLOOR"
FLOOR_SUBJECT = "floor.jobs"
FLOOR_CONSUMER = "workers"
FLOOR_BUCKET = "floor-results"
PULL_EXPIRES_S = 10.0  # ktrdr's KTRDR_FETCH_TIMEOUT_S

CELERY_TASK = "bench.noop"


@dataclass(frozen=True, kw_only=True)
class Figures:
    """One baseline's figures, in dispatch.py's units."""

    name: str
    ops_per_s: float  # throughput_ops jobs submitted by CONCURRENCY submitters, all results seen
    seq_p50_ms: float  # sequential: submit -> durable result seen by the client
    seq_p99_ms: float
    cpu_per_op_us: float  # all processes, during the throughput run
    cpu_by_process: dict[str, tuple[float, float]] = field(default_factory=dict)  # (user + kernel, kernel)
    setup: str = ""


@dataclass(frozen=True)
class Skipped:
    """A baseline that could not run here, and why (the bench goes on without it)."""

    name: str
    reason: str


Result = Figures | Skipped


def describe(result: Result) -> str:
    if isinstance(result, Skipped):
        return f"  {result.name}: skipped — {result.reason}"
    from dispatch import CpuUsage

    return (f"  {result.name} ({result.setup})\n"
            f"    sequential submit -> durable result: p50 {result.seq_p50_ms:.2f} ms   "
            f"p99 {result.seq_p99_ms:.2f} ms\n"
            f"    throughput: {result.ops_per_s:,.0f} ops/s\n"
            f"    CPU per op: {CpuUsage.describe(result.cpu_by_process)}")


def child_pids(pid: int) -> list[int]:
    """Every descendant of ``pid`` (a prefork pool's children), read from /proc."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *child_pids(child)]
    return found


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """SIGTERM to every process still running, then wait for each (killed past ``timeout``)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(home: Path, name: str, *argv: str) -> subprocess.Popen[bytes]:
    log = open(home / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen([sys.executable, str(Path(__file__)), *argv], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child holds its own descriptor


# --- floor: bare JetStream ---------------------------------------------------------------------


async def floor_worker(url: str) -> None:
    """One floor worker: one pull request outstanding, ack, result put, next request."""
    import nats
    from ktrdr.runtime.publish import AckedPublisher

    nc = await nats.connect(url)
    results = AckedPublisher(nc=nc)
    await results.start()
    inbox = nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{FLOOR_STREAM}.{FLOOR_CONSUMER}"
    pull = json.dumps({"batch": 1, "expires": int(PULL_EXPIRES_S * 1e9)}).encode()
    writes: set[asyncio.Future[int]] = set()

    def check(write: asyncio.Future[int]) -> None:
        writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            print(f"result not stored: {write.exception()}", file=sys.stderr, flush=True)

    async def on_message(msg: Msg) -> None:
        # A status message (408: the request expired; 409: the consumer's limits) has no reply
        # subject and carries no job: only the request needs renewing.
        if msg.reply:
            await nc.publish(msg.reply, b"")  # the job's ack (an empty ack is +ACK)
            # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
            key = msg.reply.split(".")[5]
            # Not awaited here: the next pull request leaves in the same write as the job's ack and
            # the result (ktrdr's workers do the same), and the result's ack is checked when it comes.
            write = await results.send(f"$KV.{FLOOR_BUCKET}.{key}", b"done")
            writes.add(write)
            write.add_done_callback(check)
        await nc.publish(next_subject, pull, reply=inbox)

    # The subscription's callbacks run one at a time: one job at a time, as a 1-slot worker.
    await nc.subscribe(inbox, cb=on_message)
    await nc.publish(next_subject, pull, reply=inbox)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    if writes:
        await asyncio.wait(writes, timeout=5)
    await nc.close()


class Seen:
    """Keys seen in a KV watch, with when: a waiter may come after its key arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    def saw(self, key: str) -> None:
        now = time.perf_counter()
        self.at[key] = now
        fut = self.waiters.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(now)

    async def wait(self, key: str, timeout: float = 30) -> float:
        if key in self.at:
            return self.at[key]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[key] = fut
        return await asyncio.wait_for(fut, timeout)


async def run_floor(seq_ops: int, throughput_ops: int) -> Result:
    import httpx
    from dispatch import CpuUsage, pct
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

    import nats
    from ktrdr.natsd import NatsServer
    from ktrdr.runtime.publish import AckedPublisher

    home = Path(tempfile.mkdtemp(prefix="ktrdr-bench-floor-"))
    server = NatsServer(store_dir=home / "nats", http_port=0).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    nc = await nats.connect(server.url)
    feeder: asyncio.Task[None] | None = None
    failed = True
    try:
        js = nc.jetstream()
        await js.add_stream(name=FLOOR_STREAM, subjects=[FLOOR_SUBJECT], retention=RetentionPolicy.WORK_QUEUE,
                            storage=StorageType.FILE)
        await js.add_consumer(FLOOR_STREAM, ConsumerConfig(durable_name=FLOOR_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
                                                           ack_wait=30))
        kv = await js.create_key_value(bucket=FLOOR_BUCKET, storage=StorageType.FILE, history=1)
        seen = Seen()
        watcher = await kv.watchall()

        async def feed() -> None:
            async for entry in watcher:
                if entry is not None:
                    seen.saw(entry.key)

        feeder = asyncio.create_task(feed())
        for i in range(2):
            procs[f"worker{i}"] = spawn(home, f"floor-worker{i}", "floor-worker", server.url)
        for _ in range(300):  # both workers connected and waiting on a pull request
            if (await js.consumer_info(FLOOR_STREAM, FLOOR_CONSUMER)).num_waiting >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"floor workers did not start; see the logs in {home}")

        jobs = AckedPublisher(nc=nc)
        await jobs.start()
        latencies: list[float] = []
        for i in range(seq_ops + WARMUP):
            t0 = time.perf_counter()
            seq = await (await jobs.send(FLOOR_SUBJECT, b""))
            done = await seen.wait(str(seq))
            if i >= WARMUP:
                latencies.append((done - t0) * 1000)

        pids = {"nats-server": server.pid, **{name: p.pid for name, p in procs.items()}, "bench client": os.getpid()}
        usage = CpuUsage(pids)
        varz = f"http://127.0.0.1:{server.http_port}/varz"
        async with httpx.AsyncClient() as http:
            varz0 = (await http.get(varz)).json()
        keys: list[str] = []

        async def submit(count: int) -> None:
            for _ in range(count):
                keys.append(str(await (await jobs.send(FLOOR_SUBJECT, b""))))

        shares = [throughput_ops // CONCURRENCY + (1 if i < throughput_ops % CONCURRENCY else 0)
                  for i in range(CONCURRENCY)]
        t0 = time.perf_counter()
        await asyncio.gather(*(submit(share) for share in shares))
        await asyncio.gather(*(seen.wait(key, 300) for key in keys))
        elapsed = time.perf_counter() - t0
        per_op = usage.per_op_us(throughput_ops)
        async with httpx.AsyncClient() as http:
            varz1 = (await http.get(varz)).json()
        msgs_in = (varz1["in_msgs"] - varz0["in_msgs"]) / throughput_ops
        msgs_out = (varz1["out_msgs"] - varz0["out_msgs"]) / throughput_ops
        failed = False
        return Figures(name="floor", ops_per_s=throughput_ops / elapsed, seq_p50_ms=pct(latencies, 50),
                       seq_p99_ms=pct(latencies, 99), cpu_per_op_us=sum(b for b, _ in per_op.values()),
                       cpu_by_process=per_op,
                       setup=f"bare JetStream work queue, nats-server GOMAXPROCS={server.gomaxprocs}, file storage, "
                             f"2 worker processes; {msgs_in:.1f} msgs in / {msgs_out:.1f} out of nats-server per job")
    finally:
        if feeder is not None:
            feeder.cancel()
        await nc.close()
        stop_all(procs.values())
        server.stop()
        if failed:
            print(f"floor: logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


# --- Celery 5 + Redis ----------------------------------------------------------------------------


def celery_missing() -> str | None:
    """Why the Celery baseline cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server not found (Debian: apt-get install redis-server)"
    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            return f"Python package {module!r} not installed (pip install -e '.[bench]')"
    return None


def make_celery(url: str) -> Any:
    """The app of both the client and the workers: one no-op task, acks_late, results in Redis."""
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("ktrdr_bench", broker=url, backend=url)
    app.conf.update(task_acks_late=True, task_serializer="json", result_serializer="json",
                    accept_content=["json"], broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)

    @app.task(name=CELERY_TASK, acks_late=True, shared=False)  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    return app


def celery_worker(url: str, name: str, pool: str) -> None:
    make_celery(url).worker_main(["worker", f"--pool={pool}", "--concurrency=1", "--loglevel=WARNING",
                                  "--without-gossip", "--without-mingle", "--without-heartbeat",
                                  f"--hostname={name}@bench"])


def start_redis(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    from ktrdr.natsd import free_port, port_open

    port = free_port()
    log = open(home / "redis.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home),
                                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start; see {home / 'redis.log'}")
        time.sleep(0.05)
    return proc, port


def celery_client(url: str, seq_ops: int, throughput_ops: int,
                  usage_of: Callable[[], CpuUsage]) -> tuple[list[float], float, dict[str, tuple[float, float]]]:
    """The client side (blocking: Celery's client is synchronous): sequential latencies in ms, then
    throughput_ops sent from this thread and all results awaited. Returns (latencies, elapsed, CPU)."""
    app = make_celery(url)
    noop = app.tasks[CELERY_TASK]
    deadline = time.monotonic() + 60
    while len(app.control.ping(timeout=0.5)) < 2:  # both workers consuming
        if time.monotonic() > deadline:
            raise RuntimeError("Celery workers did not answer a ping within 60 s")
    latencies: list[float] = []
    for i in range(seq_ops + WARMUP):
        t0 = time.perf_counter()
        noop.apply_async().get(timeout=30)
        if i >= WARMUP:
            latencies.append((time.perf_counter() - t0) * 1000)
    usage = usage_of()
    t0 = time.perf_counter()
    results = [noop.apply_async() for _ in range(throughput_ops)]
    for result in results:
        result.get(timeout=300)
    elapsed = time.perf_counter() - t0
    per_op = usage.per_op_us(throughput_ops)
    app.close()
    return latencies, elapsed, per_op


async def run_celery(seq_ops: int, throughput_ops: int, pool: str = "solo") -> Result:
    if (reason := celery_missing()) is not None:
        return Skipped("celery", reason)
    from dispatch import CpuUsage, pct

    home = Path(tempfile.mkdtemp(prefix="ktrdr-bench-celery-"))
    redis, port = start_redis(home)
    url = f"redis://127.0.0.1:{port}/0"
    procs: dict[str, subprocess.Popen[bytes]] = {"redis-server": redis}
    failed = False
    try:
        for i in range(2):
            procs[f"worker{i}"] = spawn(home, f"celery-worker{i}", "celery-worker", url, f"w{i}", pool)

        def usage_of() -> CpuUsage:
            # Taken once the workers answer: a prefork pool's children exist by then.
            pids: dict[str, int | None] = {name: p.pid for name, p in procs.items()}
            for i in range(2):
                for n, child in enumerate(child_pids(procs[f"worker{i}"].pid)):
                    pids[f"worker{i} child{n}"] = child
            return CpuUsage({**pids, "bench client": os.getpid()})

        latencies, elapsed, per_op = await asyncio.to_thread(celery_client, url, seq_ops, throughput_ops, usage_of)
        celery_version = _version("celery")
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
        return Figures(name="celery", ops_per_s=throughput_ops / elapsed, seq_p50_ms=pct(latencies, 50),
                       seq_p99_ms=pct(latencies, 99), cpu_per_op_us=sum(b for b, _ in per_op.values()),
                       cpu_by_process=per_op,
                       setup=f"Celery {celery_version}, {' '.join(redis_version[:3])}, broker and backend, "
                             f"2 workers --pool {pool}, acks_late, client sends from one thread")
    except Exception as exc:  # a baseline that fails must not cost the ktrdr figures
        failed = True
        return Skipped("celery", f"failed: {exc!r}; logs kept in {home}")
    finally:
        stop_all(procs.values())
        if not failed:
            shutil.rmtree(home, ignore_errors=True)


# --- the comparison ------------------------------------------------------------------------------

# The issue's targets for ktrdr against the baselines measured beside it.
TARGET_OPS_VS_FLOOR = 0.5  # throughput at least half the bare floor's
TARGET_OPS_VS_CELERY = 3.0  # and at least 3x Celery's
TARGET_P50_VS_FLOOR = 2.0  # sequential submit -> durable record, p50: at most twice the floor's
TARGET_COORDINATOR_CPU_US = 200.0  # the coordinator's CPU per op


def summary(results: list[Result], ktrdr: dict[str, float], label: str) -> None:
    """The table: every ktrdr figure beside both baselines and as a ratio of each, then the targets.

    ``ktrdr`` holds dispatch.py's figures (means over the runs of one security mode); a figure whose
    phase did not run, or a baseline that was skipped, is shown as "—" and its target as not checked.
    """
    base: dict[str, Figures | None] = {"floor": None, "celery": None}
    for result in results:
        if isinstance(result, Figures):
            base[result.name] = result
    floor, celery = base["floor"], base["celery"]

    def of(figures: Figures | None, attr: str) -> float | None:
        return None if figures is None else float(getattr(figures, attr))

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    # figure, floor's, Celery's, ktrdr's key, format
    rows: list[tuple[str, float | None, float | None, str, str]] = [
        ("throughput, submitted through HTTP (ops/s)", of(floor, "ops_per_s"), of(celery, "ops_per_s"),
         "http_ops", ",.0f"),
        ("throughput, submitted through NATS (ops/s)", of(floor, "ops_per_s"), of(celery, "ops_per_s"),
         "nats_ops", ",.0f"),
        ("sequential submit -> durable record, p50 (ms)", of(floor, "seq_p50_ms"), of(celery, "seq_p50_ms"),
         "seq_record_p50", ".2f"),
        ("sequential submit -> durable record, p99 (ms)", of(floor, "seq_p99_ms"), of(celery, "seq_p99_ms"),
         "seq_record_p99", ".2f"),
        ("CPU per op, all processes, HTTP run (µs)", of(floor, "cpu_per_op_us"), of(celery, "cpu_per_op_us"),
         "http_cpu", ",.0f"),
        ("CPU per op, all processes, NATS run (µs)", of(floor, "cpu_per_op_us"), of(celery, "cpu_per_op_us"),
         "nats_cpu", ",.0f"),
        ("coordinator CPU per op, HTTP run (µs)", None, None, "http_cpu_coordinator", ",.0f"),
        ("coordinator CPU per op, NATS run (µs)", None, None, "nats_cpu_coordinator", ",.0f"),
    ]
    print(f"\n=== ktrdr ({label}) against the baselines measured in this run ===")
    print(f"{'figure':<48} {'floor':>8} {'Celery':>8} {'ktrdr':>8} {'ktrdr/floor':>12} {'ktrdr/Celery':>13}")
    for name, f_value, c_value, key, spec in rows:
        k_value = ktrdr.get(key)
        print(f"{name:<48} {fmt(f_value, spec):>8} {fmt(c_value, spec):>8} {fmt(k_value, spec):>8} "
              f"{fmt(ratio(k_value, f_value), '.2f'):>12} {fmt(ratio(k_value, c_value), '.2f'):>13}")

    def verdict(name: str, value: float | None, target: float, at_least: bool) -> None:
        if value is None:
            print(f"  {name:<62} {'—':>8}   not checked (figure or baseline missing)")
            return
        met = value >= target if at_least else value <= target
        print(f"  {name:<62} {value:8.2f}   {'PASS' if met else 'MISS'} ({'≥' if at_least else '≤'} {target:g})")

    print("targets:")
    for path, key in (("HTTP", "http_ops"), ("NATS", "nats_ops")):
        verdict(f"throughput through {path} / floor's", ratio(ktrdr.get(key), of(floor, "ops_per_s")),
                TARGET_OPS_VS_FLOOR, True)
        verdict(f"throughput through {path} / Celery's", ratio(ktrdr.get(key), of(celery, "ops_per_s")),
                TARGET_OPS_VS_CELERY, True)
    verdict("sequential durable record p50 / floor's",
            ratio(ktrdr.get("seq_record_p50"), of(floor, "seq_p50_ms")), TARGET_P50_VS_FLOOR, False)
    verdict("coordinator CPU per op, HTTP run (µs)", ktrdr.get("http_cpu_coordinator"),
            TARGET_COORDINATOR_CPU_US, False)
    verdict("coordinator CPU per op, NATS run (µs)", ktrdr.get("nats_cpu_coordinator"),
            TARGET_COORDINATOR_CPU_US, False)


async def run_baselines(which: list[str], seq_ops: int, throughput_ops: int, celery_pool: str) -> list[Result]:
    """Runs the named baselines in order, printing each; a failure becomes a Skipped, never an error."""
    results: list[Result] = []
    print(f"=== baselines: {', '.join(which)} (2 worker processes each, {seq_ops} sequential + "
          f"{throughput_ops} jobs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}) ===")
    for name in which:
        try:
            if name == "floor":
                result = await run_floor(seq_ops, throughput_ops)
            else:
                result = await run_celery(seq_ops, throughput_ops, celery_pool)
        except Exception as exc:  # the ktrdr figures still come
            result = Skipped(name, f"failed: {exc!r}")
        print(describe(result), flush=True)
        results.append(result)
    print()
    return results


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    role, *rest = sys.argv[1:]
    if role == "floor-worker":
        from ktrdr.runtime.loop import run

        # ktrdr's workers run on the same loop (uvloop) with the same garbage-collector tuning.
        run(floor_worker(rest[0]))
    elif role == "celery-worker":
        celery_worker(*rest)
    else:
        raise SystemExit(f"unknown role {role!r}")
