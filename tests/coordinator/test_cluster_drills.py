"""Drills on the three-node secure cluster (tests/coordinator/cluster.py), each under a steady load of
submissions through the status API: one node lost (JetStream's meta leader, the node the coordinator
is connected to, the node leading the object stores), then two of three lost and brought back.

What holds: no operation is lost or fails and nothing answers 500; losing one node only slows
submissions (every one a 201); losing the quorum turns them, once the write budget is spent, into
503s with Retry-After while readiness says 503, and all is well again once the nodes are back. Each
drill prints how long submissions stalled (`pytest -s`), the figures the README reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from coordinator.api import SUBMIT_PATH
from coordinator.app import Coordinator
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer
from ktrdr.runtime.retry import transient_js_error
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names, roles
from subjects.models import OpStatus
from tests.backtesting import backtest_params, publish_synth
from tests.conftest import bounded, coordinator_settings, creds
from tests.coordinator.cluster import Cluster
from tests.support import assert_eventually, auth_headers
from worker_backtest.handler import BacktestHandler

# A lease longer than a leader election (as in test_cluster.py): losing a node must not look like
# losing the worker.
LEASE = {"lease_ttl_s": 8.0, "heartbeat_s": 0.5}
RATE_PER_S = 5.0
SUBMIT = {"type": "dummy", "params": {"duration": 0}}
# Submissions before the fault: the latency of a healthy cluster.
BEFORE = 5
# After one node is lost: 10 s, past the longest election nats-server holds (4 to 9 s without a leader).
AFTER_A_LOSS = 50
# Two of three nodes down for 8 s, then 6 s more of load while they rejoin and elect.
QUORUM_LOST_FOR = 40
AFTER_THE_RETURN = 30
# Every op of a drill is done well within this once its nodes are back.
SETTLE_S = 60.0


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

    def fault(self) -> None:
        self.fault_at = asyncio.get_running_loop().time()

    async def _submit(self) -> Answer:
        loop = asyncio.get_running_loop()
        at = loop.time()
        try:
            response = await self.http.post(SUBMIT_PATH, json=SUBMIT)
        except httpx.HTTPError as exc:
            return Answer(sent_at=at, latency_s=loop.time() - at, status=0, text=repr(exc), retry_after=None)
        return Answer(sent_at=at, latency_s=loop.time() - at, status=response.status_code, text=response.text,
                      retry_after=response.headers.get("Retry-After"))

    def report(self, drill: str) -> str:
        """How long submissions stalled once the fault began: the figures the README reports."""
        assert self.fault_at is not None
        after = [a for a in self.answers if a.sent_at >= self.fault_at]
        latencies = [a.latency_s for a in after]
        refused = [a for a in after if a.status != 201]
        statuses = sorted({a.status for a in refused})
        window = (f"{len(refused)} non-201 ({', '.join(map(str, statuses))}) sent from "
                  f"t+{min(a.sent_at for a in refused) - self.fault_at:.1f} s to "
                  f"t+{max(a.sent_at for a in refused) - self.fault_at:.1f} s" if refused else "no non-201")
        return (f"{drill}: {len(after)} submissions after the fault; longest {max(latencies):.2f} s, "
                f"p50 {statistics.median(latencies):.3f} s; {window}")

    @property
    def accepted(self) -> list[str]:
        return [a.op_id for a in self.answers if a.op_id is not None]


@contextlib.asynccontextmanager
async def steady_load(http: httpx.AsyncClient, limit: int) -> AsyncIterator[Load]:
    load = Load(http=http, limit=limit)
    running = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        await running


@contextlib.asynccontextmanager
async def platform(cluster: Cluster, data_dir: Path) -> AsyncIterator[Coordinator]:
    """A coordinator and one worker (dummy ops and backtests), both given all three URLs."""
    await cluster.ready()
    coordinator = Coordinator(settings=coordinator_settings(cluster.urls, js_replicas=3, nats_ca=cluster.tls.ca,
                                                            **LEASE))
    await coordinator.start()
    try:
        worker = Worker(settings=WorkerSettings(nats_url=cluster.urls, nats_creds=creds(roles.WORKER),
                                                nats_ca=cluster.tls.ca, worker_id="w1", js_replicas=3,
                                                fetch_timeout_s=0.3, grace_s=1, **LEASE),
                        worker_type="backtest", capabilities=[names.CAP_DUMMY_ANY, names.CAP_BACKTEST_CPU],
                        handlers={names.KIND_DUMMY: run_dummy, names.KIND_BACKTEST: BacktestHandler(data_dir)},
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


def no_500s(coordinator: Coordinator, load: Load, figures: str) -> None:
    errors = [a.text for a in load.answers if a.status == 500 or a.status == 0]
    assert not errors, f"{len(errors)} submissions answered 500 or not at all, e.g. {errors[0]}; {figures}"
    assert coordinator.metrics.api_errors.labels(status="500")._value.get() == 0, figures


def nothing_unaccounted(coordinator: Coordinator, load: Load, others: Iterable[str], figures: str) -> None:
    """No op exists that its client was not told about (refused, it would be submitted twice)."""
    extra = {op.op_id for op in coordinator.ops.all()} - set(load.accepted) - set(others)
    assert not extra, f"recorded though refused: {sorted(extra)}; {figures}"


def no_tracebacks_for_elections(records: list[logging.LogRecord], figures: str) -> None:
    """What an election throws passes by itself: one line each, not a traceback."""
    traced = [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in records
              if r.exc_info and r.exc_info[1] is not None and transient_js_error(r.exc_info[1])]
    assert not traced, f"tracebacks logged for an election: {traced}; {figures}"


def log_summary(records: list[logging.LogRecord]) -> str:
    lines: dict[str, int] = {}
    for r in records:
        key = f"{r.levelname} {r.name}: {r.getMessage()[:100]}"
        lines[key] = lines.get(key, 0) + 1
    return "\n".join(f"  {n:3d} × {line}" for line, n in sorted(lines.items(), key=lambda kv: -kv[1])[:25])


async def drill_one_node_lost(coordinator: Coordinator, victim: NatsServer | None, drill: str,
                              caplog: pytest.LogCaptureFixture, *, cluster: Cluster) -> None:
    """Kill one node under load (``victim``, or when None the node the coordinator is connected to,
    found at the moment of the kill)."""
    async with api(coordinator) as http, steady_load(http, BEFORE + AFTER_A_LOSS) as load:
        await load.until_sent(BEFORE)
        victim = victim or cluster.serving(coordinator.nc)
        victim.kill()
        load.fault()
    figures = f"{load.report(drill)} (node {victim.name})"
    print(f"\n{figures}\n{log_summary(caplog.records)}")
    only_201s(coordinator, load, figures)
    await all_completed(coordinator, load.accepted, figures)
    nothing_unaccounted(coordinator, load, [], figures)
    no_tracebacks_for_elections(caplog.records, figures)


def only_201s(coordinator: Coordinator, load: Load, figures: str) -> None:
    no_500s(coordinator, load, figures)
    refused = [f"{a.status} {a.text}" for a in load.answers if a.status != 201]
    assert not refused, f"{len(refused)} submissions refused with one node down, e.g. {refused[0]}; {figures}"


@pytest.fixture(autouse=True)
def warnings_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


async def test_killing_the_jetstream_meta_leader_slows_submissions_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        await drill_one_node_lost(coordinator, await cluster.meta_leader(), "meta leader killed", caplog,
                                  cluster=cluster)


async def test_killing_the_node_the_coordinator_is_connected_to_slows_submissions_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        await drill_one_node_lost(coordinator, None, "coordinator's node killed", caplog, cluster=cluster)


async def test_a_backtest_completes_with_the_node_leading_the_object_stores_down(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        # Its data in `data` (the worker's own cache is empty), its result for `results`: both led
        # from the node that is lost.
        await publish_synth(coordinator.nc, tmp_path / "publisher")
        leader = await lead_both_object_stores_from_one_node(cluster, coordinator)
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
        figures = f"{load.report('object stores leader killed')} (node {leader.name})"
        print(f"\n{figures}\n{log_summary(caplog.records)}")
        only_201s(coordinator, load, figures)
        await all_completed(coordinator, load.accepted, figures)
        nothing_unaccounted(coordinator, load, [backtest], figures)
        no_tracebacks_for_elections(caplog.records, figures)


async def lead_both_object_stores_from_one_node(cluster: Cluster, coordinator: Coordinator) -> NatsServer:
    """The node leading `OBJ_data`, made to lead `OBJ_results` too (a leader stepdown naming it)."""
    data, results = (f"OBJ_{b}" for b in (names.DATA_OBJECTS, names.RESULTS_OBJECTS))
    leader = await stream_leader(coordinator, data)
    if await stream_leader(coordinator, results) != leader:
        request = {"placement": {"preferred": leader}}
        await coordinator.nc.request(f"{names.JS_API_PREFIX}.STREAM.LEADER.STEPDOWN.{results}",
                                     json.dumps(request).encode(), timeout=5)

    async def moved() -> bool:
        with contextlib.suppress(Exception):
            return await stream_leader(coordinator, results) == leader
        return False

    await assert_eventually(moved, timeout=20, interval=0.2, message=f"{results} is not led from {leader}")
    return cluster.node(leader)


async def stream_leader(coordinator: Coordinator, stream: str) -> str:
    info = await coordinator.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader: {info.cluster}"
    return info.cluster.leader


async def readiness(http: httpx.AsyncClient) -> tuple[int, dict[str, object]]:
    response = await http.get("/health/ready")
    return response.status_code, response.json()


async def test_a_quorum_lost_and_regained_answers_503s_with_retry_after_and_loses_nothing(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with platform(cluster, tmp_path / "worker-data") as coordinator:
        clock = asyncio.get_running_loop().time
        async with api(coordinator) as http, steady_load(http, BEFORE + QUORUM_LOST_FOR + AFTER_THE_RETURN) as load:
            await load.until_sent(BEFORE)
            # The coordinator's own node stays: connected, it must still see that nothing can be written.
            kept = cluster.serving(coordinator.nc)
            lost = [n for n in cluster.nodes if n is not kept]
            for node in lost:
                node.kill()
            load.fault()
            assert load.fault_at is not None

            async def not_ready_though_connected() -> bool:
                status, body = await readiness(http)
                return status == 503 and body["nats"] is True

            await assert_eventually(not_ready_though_connected, timeout=QUORUM_LOST_FOR / RATE_PER_S, interval=0.2,
                                    message="ready though two of three nodes are down")
            not_ready_at = clock() - load.fault_at
            await load.until_sent(BEFORE + QUORUM_LOST_FOR)
            for node in lost:
                await asyncio.to_thread(node.start)
            back_at = clock() - load.fault_at
            await assert_eventually(lambda: _ready(http), timeout=SETTLE_S, interval=0.2,
                                    message="not ready again after the nodes came back")
            ready_at = clock() - load.fault_at
        figures = (f"{load.report('quorum lost')} (nodes {', '.join(n.name for n in lost)} down; readiness 503 "
                   f"at t+{not_ready_at:.1f} s, nodes back at t+{back_at:.1f} s, ready at t+{ready_at:.1f} s)")
        print(f"\n{figures}\n{log_summary(caplog.records)}")
        no_500s(coordinator, load, figures)
        refused = [a for a in load.answers if a.status != 201]
        assert refused, f"no submission refused though the quorum was lost; {figures}"
        wrong = [f"{a.status} {a.retry_after} {a.text}" for a in refused if a.status != 503 or a.retry_after != "2"]
        assert not wrong, f"refusals other than 503 with Retry-After: 2: {wrong}; {figures}"
        await all_completed(coordinator, load.accepted, figures)
        nothing_unaccounted(coordinator, load, [], figures)
        no_tracebacks_for_elections(caplog.records, figures)
        # And once back, a submission goes through at once.
        async with api(coordinator) as http:
            after = await http.post(SUBMIT_PATH, json=SUBMIT)
            assert after.status_code == 201, f"{after.text}; {figures}"
        await all_completed(coordinator, [after.json()["op_id"]], figures)


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await readiness(http))[0] == 200
