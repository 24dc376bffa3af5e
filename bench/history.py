"""History benchmark: the coordinator as the operation history grows (prints figures; not a test).

Starts its own nats-server (file storage, temporary), a coordinator (``python -m coordinator``,
retention off: KTRDR_RETENTION_DAYS=0) and two ``python -m worker_backtest`` workers that serve
``dummy``, every process with its role's credentials as under `ktrdr up`. Then, for each size of
``--sizes`` (cumulative: fill to the first, measure, fill on to the next, ...):

1. fill: zero-duration dummy ops (1 % of them asked to fail) submitted through the NATS service
   ``ktrdr.ops.submit`` with ``--in-flight`` requests at once, until that many op records are stored
   and every one has ended;
2. measure: the coordinator's RSS; the latency of listing 50 ops (``GET /api/v1/operations``) with no
   filter, ``status=failed``, ``type=dummy&status=completed``, a dated range (``since``/``until``
   around the middle of the fill) and ``q`` (8 hex characters of a known id); of getting ops by id
   (random ids of every age); the time a ``kill -9``-ed coordinator takes to serve again (ready, and a
   full first page of the list); the ``ops`` bucket's stream bytes and the index file's size.

At the end, the issue's targets for 1,000,000 ops: met or not.

    python bench/history.py [--sizes 10000,100000,1000000] [--in-flight 256] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import nats.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ktrdr.natsd import NatsServer, free_port  # noqa: E402
from ktrdr.runtime.connection import NatsAuth, connect  # noqa: E402
from ktrdr.security.fleet import provision  # noqa: E402
from subjects import names, roles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"
OPS_PATH = "/api/v1/operations"
FAIL_EVERY = 100  # 1 op in 100 asks to fail: what status=failed finds
LIST_SAMPLES = 50
GET_SAMPLES = 100
RESERVOIR = 5000  # ids kept, uniformly over everything submitted, for get-by-id and q
STAMP_EVERY = 100  # a wall-clock stamp every this many stored ops: the dated range's bounds
ERROR_CODE = "Nats-Service-Error-Code"

# The targets at 1,000,000 ops.
TARGET_OPS = 1_000_000
TARGET_RSS_MB = 300.0
TARGET_RESTART_S = 5.0
TARGET_LIST_MS = 20.0
TARGET_GET_MS = 5.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def file_mb(path: Path) -> float:
    """The SQLite index and its write-ahead log, if any."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            total += p.stat().st_size
    return total / 1e6


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    # Only the fleet's credentials: none from the caller's environment.
    inherited = {k: v for k, v in os.environ.items() if k not in ("KTRDR_NATS_CREDS", "KTRDR_NATS_CA")}
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**inherited, **env},
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


def note(message: str) -> None:
    """Progress, on stderr: stdout holds the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 GET client, so that the latencies are the coordinator's and not
    httpx's (which costs about as much CPU per request as the server on a small machine)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = b"Host: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % token.encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(b"GET %s HTTP/1.1\r\n%s\r\n" % (path.encode(), self.head))
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            return status, await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Filler:
    """Submits dummy ops through ``ktrdr.ops.submit``, ``in_flight`` requests at once."""

    nc: Any
    in_flight: int
    rng: random.Random
    stored: int = 0  # op records the coordinator answered for
    started: int = 0  # submissions begun
    unavailable: int = 0  # 503 answers, retried
    timeouts: int = 0  # requests unanswered within 30 s, retried with the same id
    collisions: int = 0  # a fresh id already taken (409 on a first try): another id
    first_id: str | None = None
    reservoir: list[str] = field(default_factory=list)
    stamps: list[tuple[int, datetime]] = field(default_factory=list)  # (ops stored, when)

    def _new_id(self) -> str:
        # The shape of the coordinator's own ids (subjects.models.new_op_id); chosen here so
        # that a submission retried after a timeout is answered 409 instead of stored twice.
        return f"dummy-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]}"

    async def fill_to(self, target: int) -> None:
        async def lane() -> None:
            while self.started < target:
                index = self.started
                self.started += 1
                await self._submit(index)

        await asyncio.gather(*(lane() for _ in range(max(1, min(self.in_flight, target - self.started)))))

    async def _submit(self, index: int) -> None:
        op_id = self._new_id()
        params: dict[str, Any] = {"duration": 0, "steps": 1}
        if index % FAIL_EVERY == FAIL_EVERY // 2:
            params["fail"] = True
        retried = False
        while True:
            body = json.dumps({"type": "dummy", "op_id": op_id, "params": params}).encode()
            try:
                reply = await self.nc.request(SUBMIT, body, timeout=30)
            except nats.errors.TimeoutError:
                self.timeouts += 1
                retried = True
                continue
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.2)
                continue
            code = (reply.headers or {}).get(ERROR_CODE)
            if code is None:
                break
            if code == "503":
                self.unavailable += 1
                await asyncio.sleep(0.2)
                continue
            if code == "409":
                if retried:  # stored by the request that timed out
                    break
                self.collisions += 1
                op_id = self._new_id()
                continue
            raise RuntimeError(f"{SUBMIT} answered {code}: {reply.data[:300]!r}")
        self.stored += 1
        if self.first_id is None:
            self.first_id = op_id
        # Algorithm R: every op submitted so far equally likely to be in the sample, whatever its age.
        if len(self.reservoir) < RESERVOIR:
            self.reservoir.append(op_id)
        else:
            slot = self.rng.randrange(self.stored)
            if slot < RESERVOIR:
                self.reservoir[slot] = op_id
        if self.stored % STAMP_EVERY == 0:
            self.stamps.append((self.stored, datetime.now(UTC)))

    def when(self, count: int) -> datetime:
        """About when the ``count``-th op was stored."""
        if not self.stamps:
            return datetime.now(UTC)
        return min(self.stamps, key=lambda s: abs(s[0] - count))[1]


@dataclass
class Timed:
    """One query measured: latencies (ms), or the HTTP status that stopped it."""

    ms: list[float] = field(default_factory=list)
    failed_status: int | None = None
    found: list[tuple[int, int]] = field(default_factory=list)  # (ops in the page, total) per request

    def cell(self) -> str:
        if self.failed_status is not None:
            return f"n/a (HTTP {self.failed_status})"
        return f"{statistics.median(self.ms):.1f}/{pct(self.ms, 95):.1f}"

    def p(self, q: float) -> float | None:
        return None if self.failed_status is not None or not self.ms else pct(self.ms, q)

    def describe_found(self) -> str:
        if self.failed_status is not None:
            return "n/a"
        pages = [n for n, _ in self.found]
        totals = [t for _, t in self.found]
        page = f"{min(pages)}" if min(pages) == max(pages) else f"{min(pages)}-{max(pages)}"
        total = f"{min(totals):,}" if min(totals) == max(totals) else f"{min(totals):,}-{max(totals):,}"
        return f"{page}/{total}"


async def timed(raw: RawHttp, paths: list[str], *, listing: bool) -> Timed:
    out = Timed()
    for path in paths:
        t0 = time.perf_counter()
        status, body = await raw.get(path)
        elapsed = time.perf_counter() - t0
        if status != 200:
            if listing:  # a query parameter this coordinator does not know yet: the column says so
                return Timed(failed_status=status)
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        out.ms.append(elapsed * 1000)
        data = json.loads(body)
        out.found.append((len(data["operations"]), int(data["total"])) if listing else (1, 1))
    return out


def list_path(**params: Any) -> str:
    return f"{OPS_PATH}?{urlencode({**params, 'limit': 50})}"


@dataclass
class Row:
    size: int
    fill_rate: float
    fill_note: str
    rss: float
    lists: dict[str, Timed]
    get: Timed
    restart_s: float
    rss_restarted: float
    active_after: int
    kv_mb: float
    index_mb: float


COLUMNS = [("all", "no filter"), ("failed", "status=failed"), ("type+status", "type=dummy&status=completed"),
           ("dated", "since/until"), ("q", "q=<8 hex of an id>")]


def print_header(in_flight: int) -> None:
    print(f"ktrdr history benchmark — {os.cpu_count()} CPU cores on this machine (shared by nats-server, the "
          "coordinator, 2 dummy workers and this client); nats-server file storage; retention off")
    print(f"fill: zero-duration dummy ops (1 in {FAIL_EVERY} asks to fail) through the NATS service {SUBMIT}, "
          f"{in_flight} in flight; the sizes are cumulative")
    print("columns:")
    print("  ops          op records stored (all ended before measuring)")
    print("  fill/s       ops added per second in this fill, from the first submit until every one had ended")
    print("  RSS MB       coordinator VmRSS after the fill")
    print(f"  list ...     GET {OPS_PATH}?limit=50 with: " + ", ".join(f"{c} = {d}" for c, d in COLUMNS[:4]))
    print("               (around the middle of the fill, a range holding about 1 % of the ops), q = "
          f"{COLUMNS[4][1]}; each median/p95 ms over {LIST_SAMPLES} requests, one keep-alive client")
    print(f"  get          GET {OPS_PATH}/{{id}}: median/p95 ms over {GET_SAMPLES} random ids of every age")
    print("  restart s    kill -9 of the coordinator -> new process started -> /health/ready 200 and a list "
          "of 50 answers 200 with 50 ops")
    print("  KV_ops MB    the ops bucket's stream bytes; index MB: ops-index.sqlite3 (+ -wal)")
    lists = f"{'list of 50, median/p95 ms':-^{16 * len(COLUMNS) - 2}}"
    print(f"\n{'':>27}  {lists}{'median/p95 ms':>16}")
    cells = "".join(f"{c:>16}" for c, _ in COLUMNS)
    print(f"{'ops':>10}{'fill/s':>9}{'RSS MB':>8}{cells}{'get':>16}{'restart s':>11}{'KV_ops MB':>11}"
          f"{'index MB':>10}", flush=True)


def print_row(row: Row) -> None:
    cells = "".join(f"{row.lists[c].cell():>16}" for c, _ in COLUMNS)
    print(f"{row.size:>10,}{row.fill_rate:>9,.0f}{row.rss:>8.0f}{cells}{row.get.cell():>16}{row.restart_s:>11.2f}"
          f"{row.kv_mb:>11.1f}{row.index_mb:>10.1f}")
    found = ", ".join(f"{c} {row.lists[c].describe_found()}" for c, _ in COLUMNS)
    active = "" if row.active_after == 0 else f" (NOT 0: {row.active_after} active after the restart)"
    print(f"{'':>10}  found (page/total): {found}; {row.fill_note}; after the restart: RSS "
          f"{row.rss_restarted:.0f} MB, {row.active_after} active{active}", flush=True)


def verdict(value: float | None, target: float, unit: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:.1f} {unit} — {'met' if value <= target else 'NOT met'} (target ≤ {target:g} {unit})"


def print_targets(rows: list[Row]) -> None:
    if not rows:
        return
    at = next((r for r in rows if r.size == TARGET_OPS), rows[-1])
    where = f"{TARGET_OPS:,} ops" if at.size == TARGET_OPS else f"{at.size:,} ops (not measured at {TARGET_OPS:,})"
    print(f"\ntargets for {TARGET_OPS:,} ops, as measured at {where}:")
    print(f"  coordinator RSS (the larger of after the fill and after the restart): "
          f"{verdict(max(at.rss, at.rss_restarted), TARGET_RSS_MB, 'MB')}")
    print(f"  restart to serving: {verdict(at.restart_s, TARGET_RESTART_S, 's')}")
    filtered = {c: at.lists[c].p(95) for c, _ in COLUMNS[1:]}
    measured = {c: v for c, v in filtered.items() if v is not None}
    worst = max(measured.items(), key=lambda kv: kv[1]) if measured else None
    missing = [c for c, v in filtered.items() if v is None]
    print(f"  filtered list of 50, worst p95 of the filtered queries"
          f"{f' ({worst[0]})' if worst else ''}: {verdict(worst[1] if worst else None, TARGET_LIST_MS, 'ms')}"
          f"{'; not measured: ' + ', '.join(missing) if missing else ''}")
    print(f"  get by id, p95: {verdict(at.get.p(95), TARGET_GET_MS, 'ms')}")


class Platform:
    """nats-server, the coordinator and the workers; the coordinator can be killed and started again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fleet = provision(tmp / "fleet")
        self.server = NatsServer(store_dir=tmp / "nats", config_file=self.fleet.config)
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.home = tmp / "c"
        self.base = {"KTRDR_NATS_URL": self.server.url, "KTRDR_LOG_LEVEL": "WARNING"}
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_coordinator(self) -> subprocess.Popen[bytes]:
        self.coordinator = spawn("coordinator", {
            **self.base, **self.fleet.env(roles.COORDINATOR), "KTRDR_API_PORT": str(self.port),
            "KTRDR_API_TOKEN": self.token, "KTRDR_HOME": str(self.home), "KTRDR_RETENTION_DAYS": "0",
        }, self.tmp / "coordinator.log")
        return self.coordinator

    def start_workers(self, n: int = 2) -> None:
        for i in range(n):
            self.workers.append(spawn("worker_backtest", {
                **self.base, **self.fleet.env(roles.WORKER), "KTRDR_WORKER_ID": f"bench-history-{i}",
                "KTRDR_WORKER_INDEX": str(i), "KTRDR_HOME": str(self.tmp / f"w{i}"),
            }, self.tmp / f"worker-{i}.log"))

    def stop(self) -> None:
        stop([*self.workers, *([self.coordinator] if self.coordinator is not None else [])])
        self.server.stop()

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})

    @property
    def index_file(self) -> Path:
        return self.home / "ops-index.sqlite3"


async def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = await predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        await asyncio.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


async def active(api: httpx.AsyncClient) -> int:
    r = await api.get(OPS_PATH, params={"active_only": "true", "limit": 1})
    r.raise_for_status()
    return int(r.json()["total"])


async def restart(platform: Platform, stored: int) -> tuple[float, int]:
    """kill -9, start again with the same env: seconds until it serves, and the active ops then."""
    old = platform.coordinator
    assert old is not None
    old.kill()
    old.wait()
    want = min(50, stored)
    async with platform.api() as api:
        t0 = time.perf_counter()
        platform.start_coordinator()

        async def ready() -> bool:
            return (await api.get("/health/ready")).status_code == 200

        async def listing() -> bool:
            r = await api.get(OPS_PATH, params={"limit": 50})
            return r.status_code == 200 and len(r.json()["operations"]) == want

        # A fresh connection on each try: the old process's keep-alive connections died with it.
        await wait_for(ready, 600, "the restarted coordinator to be ready", every=0.02)
        await wait_for(listing, 600, "the restarted coordinator to list 50 ops", every=0.02)
        elapsed = time.perf_counter() - t0
        return elapsed, await active(api)


async def measure(platform: Platform, filler: Filler, js: Any, fill_rate: float, fill_note: str) -> Row:
    assert platform.coordinator is not None
    rss = rss_mb(platform.coordinator.pid)
    rng = filler.rng
    raw = RawHttp(platform.port, platform.token)
    try:
        since = filler.when(filler.stored // 2)
        until = filler.when(filler.stored // 2 + max(200, filler.stored // 100))
        if until <= since:
            until = datetime.fromtimestamp(since.timestamp() + 1, UTC)
        known = rng.sample(filler.reservoir, min(LIST_SAMPLES, len(filler.reservoir)))
        queries: dict[str, list[str]] = {
            "all": [list_path()] * LIST_SAMPLES,
            "failed": [list_path(status="failed")] * LIST_SAMPLES,
            "type+status": [list_path(type="dummy", status="completed")] * LIST_SAMPLES,
            "dated": [list_path(since=since.isoformat(), until=until.isoformat())] * LIST_SAMPLES,
            # 8 hex characters from inside the id's random part ("dummy-" + 12 hex), a different id each time.
            "q": [list_path(q=op_id[8:16]) for op_id in known],
        }
        lists = {name: await timed(raw, paths, listing=True) for name, paths in queries.items()}
        ids = rng.sample(filler.reservoir, min(GET_SAMPLES - 1, len(filler.reservoir)))
        if filler.first_id is not None:
            ids.append(filler.first_id)  # the oldest op, whatever the sample holds
        get = await timed(raw, [f"{OPS_PATH}/{op_id}" for op_id in ids], listing=False)
    finally:
        raw.close()
    info = await js.stream_info(names.kv_stream(names.OPS_BUCKET))
    kv_mb = info.state.bytes / 1e6
    index_mb = file_mb(platform.index_file)
    restart_s, active_after = await restart(platform, filler.stored)
    assert platform.coordinator is not None
    return Row(size=filler.stored, fill_rate=fill_rate, fill_note=fill_note, rss=rss, lists=lists, get=get,
               restart_s=restart_s, rss_restarted=rss_mb(platform.coordinator.pid), active_after=active_after,
               kv_mb=kv_mb, index_mb=index_mb)


async def run(args: argparse.Namespace, tmp: Path) -> None:
    platform = Platform(tmp)
    platform.server.start()
    nc = None
    try:
        platform.start_coordinator()
        platform.start_workers(2)
        async with platform.api() as api:
            async def workers_up() -> bool:
                r = await api.get("/health")
                return r.status_code == 200 and r.json()["workers"] == 2

            await wait_for(workers_up, 120, "the coordinator and 2 workers")
            nc = await connect(platform.server.url, name="bench-history", auth=NatsAuth(
                credential=platform.fleet.credentials[roles.CLIENT]), reconnect=False, quiet=True)
            js = nc.jetstream()
            filler = Filler(nc=nc, in_flight=args.in_flight, rng=random.Random(args.seed))
            print_header(args.in_flight)
            rows: list[Row] = []
            for size in args.sizes:
                before = filler.stored
                note(f"filling from {before:,} to {size:,} ops")
                counts = (filler.unavailable, filler.timeouts)
                t0 = time.perf_counter()
                await filler.fill_to(size)
                submitted = time.perf_counter() - t0
                async with platform.api() as fresh:  # the coordinator may have been restarted since `api` connected

                    async def all_ended(client: httpx.AsyncClient = fresh) -> bool:
                        return await active(client) == 0

                    await wait_for(all_ended, max(600.0, (size - before) / 50), f"{size:,} ops to end", every=0.25)
                elapsed = time.perf_counter() - t0
                rate = (size - before) / elapsed
                fill_note = (f"fill: {size - before:,} ops submitted in {submitted:.1f} s, all ended after "
                             f"{elapsed:.1f} s ({(size - before) / submitted:,.0f} submits/s)")
                if filler.unavailable > counts[0] or filler.timeouts > counts[1]:
                    fill_note += (f", {filler.unavailable - counts[0]} answered 503, {filler.timeouts - counts[1]} "
                                  "timed out (retried)")
                note(f"{size:,} stored ({rate:,.0f} ops/s); measuring")
                row = await measure(platform, filler, js, rate, fill_note)
                rows.append(row)
                print_row(row)
            print_targets(rows)
            if filler.collisions:
                print(f"\n({filler.collisions} generated id(s) already taken: submitted again with another id)")
    finally:
        if nc is not None:
            await nc.close()
        platform.stop()


def parse_sizes(value: str) -> list[int]:
    sizes = [int(v.strip().replace("_", "")) for v in value.split(",") if v.strip()]
    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive and increasing (they are cumulative)")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("10000,100000,1000000"),
                        help="comma-separated op counts, increasing: fill to each in turn and measure")
    parser.add_argument("--in-flight", type=int, default=256, help="concurrent ktrdr.ops.submit requests")
    parser.add_argument("--seed", type=int, default=7, help="of the ids and the samples")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directory (logs, stores)")
    args = parser.parse_args()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the platform's processes are stopped on the way out

    signal.signal(signal.SIGTERM, on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-bench-history-"))
    keep = args.keep
    from ktrdr.runtime.loop import run as run_loop

    try:
        run_loop(run(args, tmp))
    except BaseException:
        keep = True
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        if keep:
            if args.keep:
                print(f"\ntemporary directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
