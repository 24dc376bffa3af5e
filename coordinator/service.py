"""The coordinator's NATS micro service: submit, get and list operations from any NATS client.

``nats micro ls`` shows it; ``nats req ktrdr.ops.get '{"op_id": "..."}'`` calls it. It calls the same
operations layer as the status API (``coordinator.layer``) and answers its errors from the same table
(``coordinator.errors``): the HTTP status code as ``Nats-Service-Error-Code``, the same JSON body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.micro import Request, add_service
from nats.micro.service import Service

from coordinator.errors import OpError, op_error, parse_body
from coordinator.layer import OpsLayer
from coordinator.metrics import Metrics
from ktrdr import __version__
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import GetRequest, ListRequest, PruneRequest, SubmitRequest

log = logging.getLogger(__name__)


class OpsService:
    def __init__(self, *, nc: Client, layer: OpsLayer, metrics: Metrics) -> None:
        self.nc = nc
        self.layer = layer
        self.metrics = metrics
        self._service: Service | None = None
        self._handling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._service = await add_service(
            self.nc, name=names.SERVICE_NAME, version=__version__,
            description="ktrdr coordinator: submit, get, list and prune operations")
        group = self._service.add_group(name=names.SERVICE_GROUP)
        await group.add_endpoint(name=names.SERVICE_SUBMIT, handler=self._concurrently(self._submit))
        await group.add_endpoint(name=names.SERVICE_GET, handler=self._get)
        await group.add_endpoint(name=names.SERVICE_LIST, handler=self._list)
        await group.add_endpoint(name=names.SERVICE_PRUNE, handler=self._concurrently(self._prune))

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        await cancel_and_wait(self._handling, what="service request")

    def _concurrently(
        self, handler: Callable[[Request], Coroutine[Any, Any, None]]
    ) -> Callable[[Request], Awaitable[None]]:
        """An endpoint's handler runs inside its subscription's callback, one request at a time;
        a submit waits on two JetStream writes, so each one gets a task of its own."""
        async def spawn(req: Request) -> None:
            task = asyncio.create_task(handler(req))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
        return spawn

    async def _error(self, req: Request, exc: BaseException) -> None:
        """``exc`` answered as the status API would (``coordinator.errors``): the same code, in the
        service error headers, and the same JSON body."""
        error = op_error(exc, nc=self.nc)
        if error.reject_reason is not None:
            self.metrics.rejected.labels(subject=req.subject, reason=error.reject_reason).inc()
        await req.respond_error(str(error.status), error.message, data=error.encode(), headers=error.headers)

    async def _submit(self, req: Request) -> None:
        try:
            op = await self.layer.submit(parse_body(SubmitRequest, req.data))
        except OpError as exc:
            await self._error(req, exc)
        except Exception as exc:
            log.exception("ktrdr.ops.submit failed")
            await self._error(req, exc)
        else:
            await req.respond(op.encode())

    async def _get(self, req: Request) -> None:
        try:
            op = self.layer.get(parse_body(GetRequest, req.data).op_id)
        except OpError as exc:
            await self._error(req, exc)
        else:
            await req.respond(op.encode())

    async def _prune(self, req: Request) -> None:
        try:
            reply = await self.layer.prune(parse_body(PruneRequest, req.data))
        except OpError as exc:
            await self._error(req, exc)
        except Exception as exc:
            log.exception("ktrdr.ops.prune failed")
            await self._error(req, exc)
        else:
            await req.respond(reply.encode())

    async def _list(self, req: Request) -> None:
        try:
            query = parse_body(ListRequest, req.data)
        except OpError as exc:
            await self._error(req, exc)
            return
        # Paged below the payload: a reply over it is not sent at all (MaxPayloadError).
        await req.respond(self.layer.page(query).encode())
