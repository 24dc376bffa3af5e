"""The coordinator process: wires registry, operations, dispatcher, cancel, service and API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from datetime import datetime
from typing import Any

import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from coordinator.api import build_app
from coordinator.cancel import CancelResponder
from coordinator.checkpoints import CheckpointJanitor
from coordinator.claims import ClaimWatch
from coordinator.dashboard.live import LiveFeed
from coordinator.dashboard.routes import dashboard_routes
from coordinator.dispatcher import Dispatcher
from coordinator.feed import OpsFeed
from coordinator.fold import ReportFold
from coordinator.garbage import StoreSweep
from coordinator.health import JetStreamProbe
from coordinator.history import OpsIndex
from coordinator.layer import OpsLayer
from coordinator.lookups import PlatformLookups
from coordinator.metrics import Metrics
from coordinator.operations import Operations
from coordinator.parents import ParentRunner
from coordinator.pins import ModelPins
from coordinator.registry import WorkerRegistry
from coordinator.retention import Retention
from coordinator.routes import optype_routes
from coordinator.service import OpsService
from coordinator.settings import CoordinatorSettings
from coordinator.trim import OpsTrim
from ktrdr.data.catalog import DataCatalog
from ktrdr.runtime.connection import NatsAuth, connect
from ktrdr.runtime.publish import AckedPublisher
from ktrdr.runtime.retry import transient_js_error
from ktrdr.runtime.tasks import TaskSet, cancel_and_wait
from ktrdr.runtime.topology import Buckets, ensure_topology
from ktrdr.security.hosts import GpuGrants
from subjects import names, roles
from subjects.models import (
    BadPayload,
    RegistrationAck,
    WorkerInfo,
    WorkerLease,
    decode,
)

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, *, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.nc: Client = None  # type: ignore[assignment]
        self.js: JetStreamContext = None  # type: ignore[assignment]
        self.publisher: AckedPublisher = None  # type: ignore[assignment]
        self.ops: Operations = None  # type: ignore[assignment]
        self.index: OpsIndex = None  # type: ignore[assignment]
        self.registry: WorkerRegistry = None  # type: ignore[assignment]
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        self.jetstream: JetStreamProbe = None  # type: ignore[assignment]
        self.layer: OpsLayer = None  # type: ignore[assignment]
        self.live: LiveFeed = None  # type: ignore[assignment]
        self.api_port: int | None = None
        # The bearer token the status API checks, resolved once at start (settings.resolve_api_token).
        self.api_token: str | None = None
        self.api_viewer_token: str | None = None
        self._subs: list[Subscription] = []
        self._registrations = TaskSet(what="registration")
        self._parts: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._feed: OpsFeed | None = None
        self._server: uvicorn.Server | None = None
        self._stop = asyncio.Event()
        self._stopped = False
        self.ready = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.nc = await connect(s.nats_url, name="ktrdr-coordinator", on_reconnect=self._on_reconnect,
                                auth=NatsAuth.resolve(s, role=roles.COORDINATOR))
        self.js = self.nc.jetstream(timeout=5.0)
        buckets = await self._ensure_topology()
        self.publisher = AckedPublisher(nc=self.nc)
        await self.publisher.start()
        assert s.ops_index is not None
        self.index = OpsIndex(path=s.ops_index)
        self.ops = Operations(bucket=buckets.ops, publisher=self.publisher, metrics=self.metrics, index=self.index,
                              recent=s.recent_ops)
        loaded = await self.ops.load()
        self.jetstream = JetStreamProbe(nc=self.nc, bucket=buckets.ops)
        self.registry = WorkerRegistry(bucket=buckets.workers, metrics=self.metrics,
                                       on_lost=self._worker_lost, gpu_allowed=GpuGrants(auth_dir=s.auth_dir))
        self.dispatcher = Dispatcher(js=self.js, publisher=self.publisher, ops=self.ops, registry=self.registry,
                                     claims=buckets.claims, settings=s, metrics=self.metrics)
        self.registry.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.ready.wait(), 5.0)
        await self.dispatcher.resume()
        parents = ParentRunner(nc=self.nc, js=self.js, ops=self.ops, dispatcher=self.dispatcher)
        await parents.start()
        # Before the feed: a claim is seen before the report it makes count, or read if not.
        self.claims = ClaimWatch(js=self.js)
        await self.claims.start()
        fold = ReportFold(ops=self.ops, claims=self.claims, host_of=self.registry.host_of,
                          read_claim=self.dispatcher.claim_holder, metrics=self.metrics,
                          retry_of=self.dispatcher.retry_of, on_retried=self.dispatcher.failure_retried)
        self._feed = OpsFeed(nc=self.nc, js=self.js, apply=fold.apply, metrics=self.metrics)
        await self._feed.start()
        self._subs.append(await self.nc.subscribe(names.WORKER_REGISTER_ALL, cb=self._on_register))
        self._subs.append(await self.nc.subscribe(names.MAX_DELIVERIES_ADVISORY, cb=self._on_advisory))
        cancel = CancelResponder(nc=self.nc, ops=self.ops, dispatcher=self.dispatcher,
                                 registry=self.registry, metrics=self.metrics,
                                 fallback_reply_s=s.cancel_fallback_reply_s)
        await cancel.start()
        parents.cancel_queued = cancel.cancel_queued
        retention = Retention(ops=self.ops, js=self.js, retention_days=s.retention_days, action=s.retention_action,
                              archive_days=s.archive_days, interval_s=s.prune_interval_s)
        await retention.start()
        self.layer = OpsLayer(ops=self.ops, dispatcher=self.dispatcher, nc=self.nc, retention=retention,
                              lookups=PlatformLookups(ops=self.ops, catalog=DataCatalog(js=self.js)))
        service = OpsService(nc=self.nc, layer=self.layer, metrics=self.metrics)
        await service.start()
        # Pages see the same changes the coordinator folds in (coordinator.dashboard.live).
        self.live = LiveFeed()
        self.ops.subscribe(self.live.op_changed)
        self.registry.subscribe(self.live.worker_changed)
        pins = ModelPins(js=self.js)
        self.ops.subscribe(pins.op_changed)
        await pins.start()
        janitor = CheckpointJanitor(js=self.js)
        self.ops.subscribe(janitor.op_changed)
        trim = OpsTrim(js=self.js, metrics=self.metrics)
        await trim.start()
        sweep = StoreSweep(js=self.js, ops=self.ops, metrics=self.metrics, claimant=self.claims.holder,
                           host_of=self.registry.host_of, every_s=s.prune_interval_s)
        await sweep.start()
        self._parts = [cancel, service, parents, retention, self.live, pins, janitor, trim, sweep, self.claims]
        self._tasks.append(asyncio.create_task(self._reaper(), name="reaper"))
        self._tasks.append(asyncio.create_task(self._topology_watch(), name="topology-watch"))
        if s.api_enabled:
            await self._start_api()
        log.info("coordinator up: %d operation(s) loaded, %d worker(s) leased, API %s",
                 loaded, len(self.registry.workers),
                 f"http://{s.api_host}:{self.api_port}" if s.api_enabled else "off")
        self.ready.set()

    async def _start_api(self) -> None:
        self.api_token = self.settings.resolve_api_token()
        self.api_viewer_token = self.settings.resolve_api_viewer_token()
        app = build_app(self, [*optype_routes(), *dashboard_routes()])
        # No proxy-header rewriting (it listens on loopback by default, not behind a proxy) and
        # no Server/Date headers: less work on every request of a busy submit path.
        config = uvicorn.Config(app, host=self.settings.api_host, port=self.settings.api_port,
                                log_level="warning", lifespan="off", access_log=False,
                                proxy_headers=False, server_header=False, date_header=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self._tasks.append(asyncio.create_task(self._server.serve(), name="api"))
        while not self._server.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()
                raise RuntimeError(f"status API could not listen on {self.settings.api_port}")
            await asyncio.sleep(0.01)
        self.api_port = self._server.servers[0].sockets[0].getsockname()[1]

    async def run(self) -> None:
        if not self.ready.is_set():
            await self.start()
        await self._stop.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._stopped or self.nc is None:
            return
        self._stopped = True
        if self._server is not None:
            self._server.should_exit = True
        for part in self._parts:
            with contextlib.suppress(Exception):
                await part.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._feed is not None:
            await self._feed.stop()
        await self.registry.stop()
        await self.dispatcher.stop()
        api = [t for t in self._tasks if t.get_name() == "api"]
        if api:
            # uvicorn ends by itself once should_exit is set; bounded in case a request hangs.
            await asyncio.wait(api, timeout=5.0)
        await cancel_and_wait(self._tasks, what="coordinator task")
        await self._registrations.stop()
        await self.publisher.stop()
        await self.ops.stop()
        self.index.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        log.info("coordinator stopped")

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- inputs ---------------------------------------------------------------------------

    async def _on_register(self, msg: Msg) -> None:
        try:
            info = decode(WorkerInfo, msg.data)
        except BadPayload as exc:
            self.metrics.rejected.labels(subject=names.WORKER_REGISTER_ALL, reason="invalid").inc()
            log.error("rejected registration: %s", exc)
            if msg.reply:
                await msg.respond(RegistrationAck(accepted=False, worker_id="?", message=str(exc)).encode())
            return
        log.info("registration from %s (%s, pid %d on %s)", info.worker_id, info.worker_type,
                 info.pid, info.host)
        # Answered from a task: finding out whether a held id is alive takes a heartbeat or two, and
        # the subscription must not wait for it meanwhile.
        self._registrations.spawn(self._answer_register(msg, info))

    async def _answer_register(self, msg: Msg, info: WorkerInfo) -> None:
        s = self.settings
        # A live worker writes its lease every heartbeat; one not written for two of them (and a second
        # for a busy machine) is a dead process's, which its restarted self takes over.
        refused = await self.registry.admit(info, alive_within_s=min(s.lease_ttl_s, 2 * s.heartbeat_s + 1.0))
        if msg.reply:
            ack = (RegistrationAck(accepted=False, worker_id=info.worker_id, message=refused) if refused else
                   RegistrationAck(accepted=True, worker_id=info.worker_id,
                                   message=f"welcome {info.worker_id}: keep the lease alive at least every "
                                           f"{s.lease_ttl_s:g} s"))
            with contextlib.suppress(Exception):
                await msg.respond(ack.encode())

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
        except (ValueError, KeyError, TypeError) as exc:
            self.metrics.rejected.labels(subject="$JS.EVENT.ADVISORY", reason="invalid").inc()
            log.error("unreadable max-deliveries advisory: %s", exc)
            return
        await self.dispatcher.fail_undeliverable(seq, advisory.get("deliveries"))

    async def _worker_lost(self, worker_id: str, lease: WorkerLease | None, reason: str,
                           started_before: datetime | None) -> None:
        await self.dispatcher.worker_lost(worker_id, lease, reason, started_before=started_before)

    async def _on_reconnect(self) -> None:
        # The ordered consumer behind the KV watch does not survive a server restart reliably.
        if self.registry is not None:
            await self.registry.restart()

    async def _ensure_topology(self) -> Buckets:
        s = self.settings
        return await ensure_topology(self.js, lease_ttl_s=s.lease_ttl_s, replicas=s.js_replicas,
                                     ib_lock_ttl_s=s.ib_lock_ttl_s, archive_days=s.archive_days,
                                     store_limits=s.store_limits())

    async def _topology_watch(self) -> None:
        """Recreate any stream, consumer, bucket or object store that has gone missing (deleted by
        hand, or lost with a store): without one, every new operation would stay pending."""
        while True:
            await asyncio.sleep(self.settings.topology_check_s)
            try:
                await self._ensure_topology()
            except Exception as exc:
                log.warning("checking the streams and buckets failed (retrying in %.0f s): %s",
                            self.settings.topology_check_s, exc)

    async def _reaper(self) -> None:
        grace = self.settings.startup_grace_s
        if grace is None:
            grace = self.settings.lease_ttl_s + self.settings.heartbeat_s + 1.0
        await asyncio.sleep(grace)
        while True:
            try:
                await self.dispatcher.reap_orphans()
            except Exception as exc:
                if not transient_js_error(exc, nc=self.nc):
                    log.exception("reaper failed")
                else:
                    # An election passes by itself, and the next pass finds the same orphans: one line.
                    log.warning("reaper pass skipped, JetStream unavailable (%s); next in %.0f s",
                                str(exc) or type(exc).__name__, self.settings.lease_ttl_s)
            await asyncio.sleep(self.settings.lease_ttl_s)

    async def collect_metrics(self) -> None:
        self.ops.collect()
        self.registry.collect()
        self.metrics.live_pages.set(self.live.subscribers)
        for capability in names.CAPABILITIES:
            try:
                info = await self.js.consumer_info(names.JOBS_STREAM, names.jobs_consumer(capability))
                self.metrics.queue_depth.labels(capability=capability).set(info.num_pending or 0)
            except Exception as exc:
                log.debug("queue depth of %s unavailable: %s", capability, exc)


async def run_until_signal(coordinator: Coordinator) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.request_stop)
    await coordinator.run()
