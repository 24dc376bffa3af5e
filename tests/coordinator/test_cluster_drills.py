"""Drills on the three-node secure cluster (tests/coordinator/cluster.py), each under a steady load of
submissions through the status API: one node lost (JetStream's meta leader, the node the coordinator
is connected to, the node leading the object stores), then two of three lost and brought back.

What holds: no operation is lost or fails and nothing answers 500; losing one node only slows
submissions (every one a 201); losing the quorum turns them, once the write budget is spent, into
503s with Retry-After while readiness says 503, and all is well again once the nodes are back. The
node lost in each single-node drill also leads what every submission writes (the `ops` bucket and
`JOBS`), and in the quorum drill the node kept does: the longest stall each kind of loss can cause.
Each drill prints how long submissions stalled (`pytest -s`), the figures bench/README.md reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import statistics
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from nats.js.errors import KeyNotFoundError

from coordinator.api import SUBMIT_PATH
from coordinator.app import Coordinator
from coordinator.health import HEALTH_KEY
from ktrdr.natsd import NatsServer
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names, roles
from subjects.models import OpStatus
from tests.backtesting import backtest_params, publish_synth
from tests.conftest import bounded, coordinator_settings, creds
from tests.coordinator.cluster import Cluster
from tests.support import assert_eventually, auth_headers, standin_handlers
from worker_backtest.handler import BacktestHandler

# A lease longer than any outage here (an election: up to 10 s; the quorum drill: up to about 25 s,
# 15 s down and an election once the nodes are back), so that losing nodes never looks like losing the
# worker: no heartbeat is stored meanwhile.
LEASE = {"lease_ttl_s": 40.0, "heartbeat_s": 0.5}
# What a submission writes: its record (the `ops` bucket) and its job.
SUBMISSION_STREAMS = (names.kv_stream(names.OPS_BUCKET), names.JOBS_STREAM)
RATE_PER_S = 5.0
SUBMIT = {"type": "dummy", "params": {"duration": 0}}
# Submissions before the fault: the latency of a healthy cluster.
BEFORE = 5
# After one node is lost: 10 s, past the longest election (followers wait 4 to 9 s for a lost leader).
AFTER_A_LOSS = 50
# Two of three nodes down for 15 s, longer than the coordinator's write budget (12 s), then 6 s more of
# load while they rejoin.
QUORUM_LOST_FOR = 75
AFTER_THE_RETURN = 30
# Every op of a drill is done well within this once its nodes are back.
SETTLE_S = 60.0
# What varies between log lines of one kind: op ids and pauses.
VARYING = re.compile(r"\b[a-z]{1,5}-[0-9a-f]{12}\b|\d+\.\d s")
WITHDRAWN = "stored after all; withdrawn"


# --- the load -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Answer:
    sent_at: float  # the event loop's clock
    latency_s: float
    status: int  # 0: no HTTP answer at all
    text: str
    retry_after: str | None

    @property
    def op_id(self) -> str | None:
        return json.loads(self.text)["op_id"] if self.status == 201 else None


@dataclass(kw_only=True)
class Load:
    """One submission every 1/RATE_PER_S s through the API, each in its own task (as from many
    clients: one that stalls does not hold up the next), ``limit`` in all."""

    http: httpx.AsyncClient
    limit: int
    fault_at: float | None = None
    sent: list[asyncio.Task[Answer]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.limit):
            self.sent.append(asyncio.create_task(self._submit()))
            # The pace of the load, not a wait for anything.
            await asyncio.sleep(max(0.0, start + (i + 1) / RATE_PER_S - loop.time()))
        self.answers = list(await asyncio.gather(*self.sent))

    async def until_sent(self, count: int) -> None:
        await assert_eventually(lambda: len(self.sent) >= count, timeout=2 * count / RATE_PER_S + 5,
                                message=f"fewer than {count} submissions sent")

    def fault(self) -> float:
        self.fault_at = asyncio.get_running_loop().time()
        return self.fault_at

    def since_fault(self) -> float:
        assert self.fault_at is not None
        return asyncio.get_running_loop().time() - self.fault_at

    async def _submit(self) -> Answer:
        loop = asyncio.get_running_loop()
        at = loop.time()
        try:
            response = await self.http.post(SUBMIT_PATH, json=SUBMIT)
        except httpx.HTTPError as exc:
            return Answer(sent_at=at, latency_s=loop.time() - at, status=0, text=repr(exc), retry_after=None)
        return Answer(sent_at=at, latency_s=loop.time() - at, status=response.status_code, text=response.text,
                      retry_after=response.headers.get("Retry-After"))

    @property
    def accepted(self) -> list[str]:
        return [a.op_id for a in self.answers if a.op_id is not None]

    @property
    def refused(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 201]

    def report(self, drill: str) -> str:
        """How long submissions stalled once the fault began: the figures bench/README.md reports."""
        assert self.fault_at is not None
        # Those in flight when it began count: a write under way to the lost node is the slowest.
        during = [a for a in self.answers if a.sent_at + a.latency_s >= self.fault_at]
        latencies = [a.latency_s for a in during]
        refused = [a for a in during if a.status != 201]
        if refused:
            sent = [a.sent_at - self.fault_at for a in refused]
            answered = [a.sent_at + a.latency_s - self.fault_at for a in refused]
            window = (f"{len(refused)} non-201 ({', '.join(sorted({str(a.status) for a in refused}))}) sent "
                      f"t{min(sent):+.1f}..{max(sent):+.1f} s, answered t{min(answered):+.1f}..{max(answered):+.1f} s")
        else:
            window = "no non-201"
        return (f"{drill}: {len(during)} submissions answered after the fault; longest {max(latencies):.2f} s, "
                f"p50 {statistics.median(latencies):.3f} s; {window}")


@contextlib.asynccontextmanager
async def steady_load(http: httpx.AsyncClient, limit: int) -> AsyncIterator[Load]:
    load = Load(http=http, limit=limit)
    running = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        await running


# --- the platform ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def platform(cluster: Cluster, data_dir: Path) -> AsyncIterator[Coordinator]:
    """A coordinator and one worker (dummy ops and backtests), both given all three URLs."""
    await cluster.ready()
    coordinator = Coordinator(settings=coordinator_settings(cluster.urls, js_replicas=3, nats_ca=cluster.tls.ca,
                                                            **LEASE))
    await coordinator.start()
    try:
        backtest = BacktestHandler(data_dir)
        worker = Worker(settings=WorkerSettings(nats_url=cluster.urls, nats_creds=creds(roles.WORKER),
                                                nats_ca=cluster.tls.ca, worker_id="w1", js_replicas=3,
                                                fetch_timeout_s=0.3, grace_s=1, **LEASE),
                        worker_type="backtest", capabilities=[names.CAP_DUMMY_ANY, names.CAP_BACKTEST_CPU],
                        handlers=standin_handlers([names.CAP_DUMMY_ANY, names.CAP_BACKTEST_CPU],
                                                  backtesting=backtest, backtest_block=backtest.run_block),
                        slots=4)
        await worker.start()
        try:
            yield coordinator
        finally:
            await bounded(worker.stop(), "the worker")
    finally:
        await bounded(coordinator.stop(), "the coordinator")


def api(coordinator: Coordinator) -> httpx.AsyncClient:
    # Longer than the write budget: a submission that waits out an election must not time out here.
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}", timeout=30.0,
                             headers=auth_headers(coordinator))


async def lead_from(coordinator: Coordinator, node: NatsServer, streams: Iterable[str]) -> None:
    """Have ``node`` lead each of ``streams`` (a leader stepdown that names it)."""
    streams = list(streams)
    for stream in streams:
        if await stream_leader(coordinator, stream) != node.name:
            await coordinator.nc.request(f"{names.JS_API_PREFIX}.STREAM.LEADER.STEPDOWN.{stream}",
                                         json.dumps({"placement": {"preferred": node.name}}).encode(), timeout=5)

    async def led() -> bool:
        with contextlib.suppress(Exception):
            return all([await stream_leader(coordinator, stream) == node.name for stream in streams])
        return False

    await assert_eventually(led, timeout=20, interval=0.2, message=f"{streams} not all led from {node.name}")


async def stream_leader(coordinator: Coordinator, stream: str) -> str:
    info = await coordinator.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader: {info.cluster}"
    return info.cluster.leader


async def readiness(http: httpx.AsyncClient) -> tuple[int, dict[str, object]]:
    response = await http.get("/health/ready")
    return response.status_code, response.json()


async def ready(http: httpx.AsyncClient) -> bool:
    return (await readiness(http))[0] == 200


# --- what holds -----------------------------------------------------------------------------------


async def all_completed(coordinator: Coordinator, op_ids: Iterable[str], figures: str) -> None:
    """Every op answered 201 is recorded and completes: none lost, none failed."""
    wanted = list(op_ids)

    def settled() -> bool:
        return all((op := coordinator.ops.get(i)) is not None and op.status.terminal for i in wanted)

    with contextlib.suppress(AssertionError):
        await assert_eventually(settled, timeout=SETTLE_S, interval=0.1)
    ops = {i: coordinator.ops.get(i) for i in wanted}
    lost = [i for i, op in ops.items() if op is None]
    unfinished = {i: f"{op.status.value}: {op.error}" for i, op in ops.items()
                  if op is not None and op.status is not OpStatus.COMPLETED}
    assert not lost and not unfinished, f"lost {lost}; not completed {unfinished}; {figures}"


async def nothing_unaccounted(coordinator: Coordinator, load: Load, others: Iterable[str], figures: str) -> None:
    """The bucket ends up holding no op that its client was told was refused (it would be submitted
    again). Read from the bucket: a write given up on and stored later never reaches the coordinator's
    mirror, and the coordinator withdraws such a record once JetStream answers again."""
    known = {*load.accepted, *others, HEALTH_KEY}

    prefix = names.kv_key_subject(names.OPS_BUCKET, "x")[:-1]

    async def unaccounted() -> set[str] | None:
        # The stream's leader lists the subjects (a key listing through an ordered consumer was seen
        # to answer "no keys" for seconds after the coordinator's node was lost); a key whose last
        # entry is a delete marker was withdrawn.
        try:
            info = await coordinator.js.stream_info(names.kv_stream(names.OPS_BUCKET), subjects_filter=f"{prefix}>")
        except Exception:
            return None
        left = set()
        for key in {s[len(prefix):] for s in (info.state.subjects or {})} - known:
            try:
                await coordinator.ops.bucket.get(key)
            except KeyNotFoundError:  # deleted (withdrawn) or purged
                continue
            left.add(key)
        return left

    async def none_left() -> bool:
        return await unaccounted() == set()

    with contextlib.suppress(AssertionError):
        await assert_eventually(none_left, timeout=SETTLE_S, interval=0.2)
    extra = await unaccounted()
    assert extra == set(), f"recorded though refused: {sorted(extra or [])} (None: no listing); {figures}"


def no_500s(coordinator: Coordinator, load: Load, figures: str) -> None:
    errors = [a.text for a in load.answers if a.status == 500 or a.status == 0]
    assert not errors, f"{len(errors)} submissions answered 500 or not at all, e.g. {errors[0]}; {figures}"
    assert coordinator.metrics.api_errors.labels(status="500")._value.get() == 0, figures


def only_201s(coordinator: Coordinator, load: Load, figures: str) -> None:
    no_500s(coordinator, load, figures)
    assert load.fault_at is not None
    refused = [f"{a.status} {a.text} (sent at t{a.sent_at - load.fault_at:+.2f} s, answered in {a.latency_s:.2f} s)"
               for a in load.refused]
    assert not refused, f"{len(refused)} submissions refused with one node down, e.g. {refused[0]}; {figures}"


def no_lease_expired(coordinator: Coordinator, figures: str) -> None:
    expired = sum(sample.value for metric in coordinator.metrics.lease_expiries.collect()
                  for sample in metric.samples if sample.name.endswith("_total"))
    assert expired == 0, f"{expired:g} leases expired; {figures}"


def nothing_logged_as_an_error(records: list[logging.LogRecord], figures: str) -> None:
    """What an election throws passes by itself: a warning line each, never an error or a traceback."""
    errors = [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" if r.exc_info else f"{r.name}: {r.getMessage()}"
              for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, f"logged as errors during an election: {errors}; {figures}"


def log_summary(records: list[logging.LogRecord]) -> str:
    """What was logged, one line per kind of message, most frequent first."""
    lines: dict[str, int] = {}
    for r in records:
        key = f"{r.levelname} {r.name}: {VARYING.sub('…', r.getMessage().splitlines()[0])[:110]}"
        lines[key] = lines.get(key, 0) + 1
    return "\n".join(f"  {n:4d} × {line}" for line, n in sorted(lines.items(), key=lambda kv: -kv[1])[:20])


@pytest.fixture(autouse=True)
def warnings_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    # And how refused submissions settled (Operations.withdraw).
    caplog.set_level(logging.INFO, logger="coordinator.store")


# --- the drills -----------------------------------------------------------------------------------


async def drill_one_node_lost(coordinator: Coordinator, victim: NatsServer, drill: str,
                              caplog: pytest.LogCaptureFixture) -> None:
    await lead_from(coordinator, victim, SUBMISSION_STREAMS)
    async with api(coordinator) as http, steady_load(http, BEFORE + AFTER_A_LOSS) as load:
        await load.until_sent(BEFORE)
        victim.kill()
        load.fault()
    figures = f"{load.report(drill)} (node {victim.name})"
    print(f"\n{figures}\n{log_summary(caplog.records)}")
    only_201s(coordinator, load, figures)
    await all_completed(coordinator, load.accepted, figures)
    await nothing_unaccounted(coordinator, load, [], figures)
    no_lease_expired(coordinator, figures)
    nothing_logged_as_an_error(caplog.records, figures)


async def test_killing_the_jetstream_meta_leader_slows_submissions_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        await drill_one_node_lost(coordinator, await cluster.meta_leader(), "meta leader killed", caplog)


async def test_killing_the_node_the_coordinator_is_connected_to_slows_submissions_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        await drill_one_node_lost(coordinator, cluster.serving(coordinator.nc), "coordinator's node killed", caplog)


async def test_a_backtest_completes_with_the_node_leading_the_object_stores_down(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        # Its data in `data` (the worker's own cache is empty), its result for `results`: both led from
        # the node that is lost.
        await publish_synth(coordinator.nc, tmp_path / "publisher")
        leader = cluster.node(await stream_leader(coordinator, f"OBJ_{names.DATA_OBJECTS}"))
        await lead_from(coordinator, leader, [names.RESULTS_STREAM, *SUBMISSION_STREAMS])
        async with api(coordinator) as http, steady_load(http, BEFORE + AFTER_A_LOSS) as load:
            await load.until_sent(BEFORE)
            leader.kill()
            load.fault()
            queued = await http.post("/api/v1/backtests", json=backtest_params())
            assert queued.status_code == 201, queued.text
            backtest = queued.json()["op_id"]
            await all_completed(coordinator, [backtest], f"the backtest, with node {leader.name} down")
            results = await http.get(f"/api/v1/operations/{backtest}/results")
            assert results.status_code == 200, results.text
            assert results.json()["metrics"], results.text
            backtest_done = load.since_fault()
        figures = f"{load.report('object stores leader killed')} (node {leader.name}; backtest done at " \
                  f"t+{backtest_done:.1f} s)"
        print(f"\n{figures}\n{log_summary(caplog.records)}")
        only_201s(coordinator, load, figures)
        await all_completed(coordinator, load.accepted, figures)
        await nothing_unaccounted(coordinator, load, [backtest], figures)
        no_lease_expired(coordinator, figures)
        nothing_logged_as_an_error(caplog.records, figures)


async def test_a_quorum_lost_and_regained_answers_503s_with_retry_after_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        # The coordinator's node stays up: connected, the coordinator must still see that nothing can be
        # written. Leading what submissions write, it takes writes that it cannot commit.
        kept = cluster.serving(coordinator.nc)
        lost = [n for n in cluster.nodes if n is not kept]
        await lead_from(coordinator, kept, SUBMISSION_STREAMS)
        async with api(coordinator) as http, steady_load(http, BEFORE + QUORUM_LOST_FOR + AFTER_THE_RETURN) as load:
            await load.until_sent(BEFORE)
            for node in lost:
                node.kill()
            load.fault()

            async def not_ready_though_connected() -> bool:
                status, body = await readiness(http)
                return status == 503 and body["nats"] is True

            await assert_eventually(not_ready_though_connected, timeout=QUORUM_LOST_FOR / RATE_PER_S, interval=0.2,
                                    message="ready though two of three nodes are down")
            not_ready_at = load.since_fault()
            await load.until_sent(BEFORE + QUORUM_LOST_FOR)
            for node in lost:
                await asyncio.to_thread(node.start)
            back_at = load.since_fault()
            await assert_eventually(lambda: ready(http), timeout=SETTLE_S, interval=0.2,
                                    message="not ready again after the nodes came back")
            ready_at = load.since_fault()
        figures = (f"{load.report('quorum lost')} (nodes {', '.join(n.name for n in lost)} down; readiness 503 "
                   f"at t+{not_ready_at:.1f} s, nodes back at t+{back_at:.1f} s, ready at t+{ready_at:.1f} s)")
        print(f"\n{figures}")
        no_500s(coordinator, load, figures)
        assert load.refused, f"no submission refused though the quorum was lost; {figures}"
        wrong = [f"{a.status} {a.retry_after} {a.text}" for a in load.refused
                 if a.status != 503 or a.retry_after != "2"]
        assert not wrong, f"refusals other than 503 with Retry-After: 2: {wrong}; {figures}"
        await all_completed(coordinator, load.accepted, figures)
        await nothing_unaccounted(coordinator, load, [], figures)
        withdrawn = sum(WITHDRAWN in r.getMessage() for r in caplog.records)
        print(f"{withdrawn} of the {len(load.refused)} refused were stored after the return, then withdrawn\n"
              f"{log_summary(caplog.records)}")
        no_lease_expired(coordinator, figures)
        nothing_logged_as_an_error(caplog.records, figures)
        # And once back, a submission goes through as before.
        async with api(coordinator) as http:
            after = await http.post(SUBMIT_PATH, json=SUBMIT)
            assert after.status_code == 201, f"{after.text}; {figures}"
        await all_completed(coordinator, [after.json()["op_id"]], figures)
