"""The host's one connection to TWS / IB Gateway: connected while active, re-established after a
drop, and described for the lease (``connected`` / ``disconnected`` ...).

Exactly one task (``_keep_connected``) ever calls ``connect``, with the host's one reconnect
policy (:meth:`host_ib.settings.IbSettings.reconnect_policy`): downloads and requests that meet a
dropped connection only *wait* for it (:meth:`ensure_connected`, :meth:`wait_connected`), so two
callers never race two handshakes on the same ``ib_insync.IB``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from host_ib.settings import IbSettings
from ktrdr.cancel import CancelToken
from ktrdr.ib.client import ConnectionState, IbClient
from ktrdr.ib.errors import ConnectionLost
from ktrdr.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, *, settings: IbSettings, client: IbClient | None = None) -> None:
        self.settings = settings
        # Pauses between connection attempts, and how long an operation waits for the connection.
        self.reconnect_policy = settings.reconnect_policy()
        self.client = client or IbClient(request_timeout_s=settings.ib_request_timeout_s,
                                         head_timeout_s=settings.ib_head_timeout_s)
        self.client.on_disconnect(self._on_drop)
        self.address = f"{settings.ib_host}:{settings.ib_port}"
        self.last_error: str | None = None
        self.connection: ConnectionState | None = None
        self.drops = 0  # connections lost while wanted (reported by downloads as reconnects)
        self._wanted = False
        self._ever_connected = False
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def state(self) -> Literal["idle", "connecting", "connected", "disconnected"]:
        """``idle`` (standby: not wanted), ``connecting``, ``connected`` or ``disconnected``."""
        if not self._wanted:
            return "idle"
        if self.client.connected:
            return "connected"
        return "disconnected" if self._ever_connected else "connecting"

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name="ib-connection")

    async def close(self) -> None:
        await self.deactivate()
        if self._task is not None:
            await cancel_and_wait([self._task], what="IB gateway connector")
            self._task = None

    def activate(self) -> None:
        self._wanted = True
        self._wake.set()

    async def deactivate(self) -> None:
        self._wanted = False
        self._connected.clear()
        if self.client.connected:
            await self.client.disconnect()

    def _on_drop(self) -> None:
        # Called by ib_insync's disconnectedEvent on the event loop, also after a failed handshake
        # (which is not a drop: the connect loop is already retrying).
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._wanted and was_connected:
            self.drops += 1
            self.last_error = "connection to IB lost"
            log.warning("connection to IB at %s lost; reconnecting", self.address)
            self._wake.set()

    async def _keep_connected(self) -> None:
        s = self.settings
        pauses = self.reconnect_policy.delays()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._wanted and not self.client.connected:
                try:
                    self.connection = await self.client.connect(
                        s.ib_host, s.ib_port, client_id=s.ib_client_id, timeout=s.ib_connect_timeout_s)
                except (ConnectionLost, OSError, TimeoutError) as exc:
                    self.last_error = str(exc)
                    delay = next(pauses)
                    log.info("IB at %s not reachable (%s); next try in %.1f s", self.address, exc, delay)
                    # Sleep on the wake event so activate()/a waiting download can cut the wait short.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    self._wake.clear()
                    continue
                if not self._wanted:  # went standby during the handshake
                    await self.client.disconnect()
                    break
                pauses = self.reconnect_policy.delays()
                self._ever_connected = True
                self.last_error = None
                self._connected.set()
                log.info("connected to IB at %s (server version %s, accounts %s)", self.address,
                         self.connection.server_version, ",".join(self.connection.accounts))

    async def wait_connected(self, timeout: float) -> None:
        """Return once connected; ConnectionLost after ``timeout`` (the caller retries or gives up)."""
        if self.client.connected:
            return
        if not self._wanted:
            raise ConnectionLost("this IB host is not the active instance")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise ConnectionLost(f"not connected to IB at {self.address}: {self.last_error or 'connecting'}") from None

    async def ensure_connected(self, token: CancelToken | None = None) -> None:
        """Wait for the connection in short slices so a cancel is noticed; ConnectionLost once the
        reconnect policy's budget is spent (or at once on a standby, which never connects)."""
        loop = asyncio.get_running_loop()
        budget = self.reconnect_policy.budget_s
        deadline = None if budget is None else loop.time() + budget
        while True:
            if token is not None:
                token.raise_if_cancelled()
            left = 1.0 if deadline is None else deadline - loop.time()
            try:
                await self.wait_connected(min(1.0, max(0.01, left)))
                return
            except ConnectionLost:
                if not self._wanted or (deadline is not None and loop.time() >= deadline):
                    raise
