"""Connecting to NATS with the options every long-running ktrdr process wants."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

import nats

log = logging.getLogger(__name__)


async def connect(
    url: str,
    *,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
) -> Client:
    """Connect, and keep reconnecting forever: a restarted nats-server must not end a worker."""

    async def error_cb(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def disconnected_cb() -> None:
        log.warning("nats: disconnected from %s", url)

    async def reconnected_cb() -> None:
        log.info("nats: reconnected to %s", url)
        if on_reconnect is not None:
            await on_reconnect()

    return await nats.connect(
        # A comma-separated list names the nodes of a cluster (nats/cluster/*.conf).
        [u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        # Large enough that a burst of progress during a reconnect is buffered, not dropped.
        pending_size=64 * 1024 * 1024,
        drain_timeout=5,
    )
