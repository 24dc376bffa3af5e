"""The IB host: the shared worker runtime plus one IB connection, one pacer and an election.

Every host_ib process competes for the ``ib_active`` lock. The winner connects to the gateway,
fetches ``jobs.data.ib`` and answers ``ib.*``; the others stay standby (no IB connection, no
fetching: IB allows one session per client id) and take over when the lock is released or
expires. The lease's ``status`` shows role, connection and pacing budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, Literal

from host_ib.download import DataLoader
from host_ib.election import ActiveElection, lock_bucket
from host_ib.gateway import Gateway
from host_ib.service import IbService
from host_ib.settings import IbSettings
from ktrdr.data.store import DataStore
from ktrdr.dummy import run_dummy
from ktrdr.ib.client import IbClient
from ktrdr.ib.pacing import Pacer, PacingRules
from ktrdr.optypes.data_load import DATA_LOAD
from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.tasks import cancel_and_wait
from ktrdr.runtime.worker import Worker
from subjects import names
from subjects.data import IbStatus

log = logging.getLogger(__name__)

# Downloads of different symbols may run side by side: they share the one pacer.
DEFAULT_SLOTS = 2


def pacing_rules(settings: IbSettings) -> PacingRules:
    return PacingRules(
        max_requests=settings.ib_pacing_max_requests,
        window_s=settings.ib_pacing_window_s,
        max_per_contract=settings.ib_pacing_per_contract,
        contract_window_s=settings.ib_pacing_contract_window_s,
        identical_interval_s=settings.ib_pacing_identical_s,
    )


class IbHost(Worker):
    settings: IbSettings

    def __init__(self, *, settings: IbSettings, client: IbClient | None = None,
                 slots: int = DEFAULT_SLOTS) -> None:
        self._activated = asyncio.Event()
        self.gateway = Gateway(settings=settings, client=client)
        # One per process, across concurrent ops and ib.bars: IB's limits and penalties are the connection's.
        self.pacer = Pacer(rules=pacing_rules(settings), backoff=settings.pacing_backoff())
        self.store = DataStore(root=settings.ib_data_dir or settings.data_dir)
        self.loader = DataLoader(gateway=self.gateway, pacer=self.pacer, store=self.store, settings=settings)
        super().__init__(
            settings=settings, worker_type="ib", capabilities=[names.CAP_DATA_IB, names.CAP_DUMMY_ANY],
            handlers={DATA_LOAD: self.loader.run, DUMMY: run_dummy}, slots=slots,
            status=self._lease_status, active=self._activated)
        self.election: ActiveElection | None = None
        self.service: IbService | None = None
        self._election_task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._activated.is_set()

    def ib_status(self) -> IbStatus:
        s = self.settings
        conn = self.gateway.connection if self.gateway.connected else None
        election = self.election
        role: Literal["active", "standby"] = "active" if self.active else "standby"
        return IbStatus(
            worker_id=self.worker_id, role=role, ib=self.gateway.state,
            gateway=self.gateway.address, client_id=s.ib_client_id,
            server_version=conn.server_version if conn else None,
            accounts=list(conn.accounts) if conn else [], last_error=self.gateway.last_error,
            pacing=self.pacer.describe(),
            counters={**self.gateway.client.counts, **(self.service.counts if self.service else {})},
            active_since=election.active_since if election else None,
            active_instance=election.holder.worker_id if election and election.holder else None)

    def _lease_status(self) -> dict[str, Any]:
        return self.ib_status().model_dump(mode="json", exclude={"schema_version"})

    async def start(self) -> None:
        await super().start()
        assert self.nc is not None and self.js is not None
        s = self.settings
        kv = await lock_bucket(self.js)
        self.service = IbService(nc=self.nc, gateway=self.gateway, pacer=self.pacer, status=self.ib_status,
                                 max_wait_s=s.ib_request_max_wait_s, reply_timeout_s=s.ib_reply_timeout_s)
        self.election = ActiveElection(
            kv=kv, worker_id=self.worker_id, host=s.hostname, pid=os.getpid(), ttl_s=s.ib_lock_ttl_s,
            refresh_s=s.ib_lock_refresh_s, poll_s=s.ib_standby_poll_s, on_change=self._on_active_change)
        self.gateway.start()
        self._election_task = asyncio.create_task(self.election.run(), name="ib-election")

    async def _on_active_change(self, active: bool) -> None:
        assert self.service is not None
        if active:
            self.gateway.activate()
            await self.service.start()
            self._activated.set()
            await self.request_jobs()
            return
        self._activated.clear()
        await self.request_jobs()
        # Another host holds the lock now (we were frozen or cut off past its TTL): our work
        # must stop before that host's session and ours both talk to IB.
        for running in list(self._running.values()):
            running.ctx.token.cancel("this IB host is no longer the active instance")
        with contextlib.suppress(Exception):
            await self.service.stop()
        await self.gateway.deactivate()

    async def _before_disconnect(self) -> None:
        # Running downloads have ended: hand the lock over now so a standby takes over at once
        # instead of after the lock's TTL.
        if self._election_task is not None:
            await cancel_and_wait([self._election_task], what="IB election")
        if self.service is not None:
            with contextlib.suppress(Exception):
                await self.service.stop()
        if self.election is not None:
            await self.election.release()
        self._activated.clear()
        await self.gateway.close()


def build_worker(settings: IbSettings) -> Worker:
    return IbHost(settings=settings)
