"""The coordinator's NATS micro service: submit, get and list operations from any NATS client.

``nats micro ls`` shows it; ``nats req ktrdr.ops.get '{"op_id": "..."}'`` calls it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.micro import Request, add_service
from nats.micro.service import Service
from pydantic import ValidationError

from coordinator.admission import Rejected, TooLarge, admit
from coordinator.dispatcher import Dispatcher
from coordinator.health import RETRY_AFTER_S, unavailable_message
from coordinator.metrics import Metrics
from coordinator.operations import OperationExists, Operations
from ktrdr import __version__
from ktrdr.runtime.retry import transient_js_error
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import BadPayload, GetRequest, ListRequest, SubmitRequest, decode

log = logging.getLogger(__name__)


class OpsService:
    def __init__(self, *, nc: Client, ops: Operations, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self.nc = nc
        self.ops = ops
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._service: Service | None = None
        self._handling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._service = await add_service(
            self.nc, name=names.SERVICE_NAME, version=__version__,
            description="ktrdr coordinator: submit, get and list operations")
        group = self._service.add_group(name=names.SERVICE_GROUP)
        await group.add_endpoint(name=names.SERVICE_SUBMIT, handler=self._concurrently(self._submit))
        await group.add_endpoint(name=names.SERVICE_GET, handler=self._get)
        await group.add_endpoint(name=names.SERVICE_LIST, handler=self._list)

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        await cancel_and_wait(self._handling, what="service request")

    def _concurrently(self, handler: Callable[[Request], Awaitable[None]]) -> Callable[[Request], Awaitable[None]]:
        """An endpoint's handler runs inside its subscription's callback, one request at a time;
        a submit waits on two JetStream writes, so each one gets a task of its own."""
        async def spawn(req: Request) -> None:
            task = asyncio.create_task(handler(req))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
        return spawn

    async def _error(self, req: Request, code: int, message: str, *, reason: str = "invalid",
                     retry_after: int | None = None) -> None:
        if code == 400:
            self.metrics.rejected.labels(subject=req.subject, reason=reason).inc()
        body: dict[str, object] = {"error": message, "code": code}
        headers = None
        if retry_after is not None:
            # As the status API says it: a Retry-After header, and in the body for clients that read only that.
            body["retry_after"] = retry_after
            headers = {"Retry-After": str(retry_after)}
        await req.respond_error(str(code), message, data=json.dumps(body).encode(), headers=headers)

    async def _submit(self, req: Request) -> None:
        try:
            op = await self.dispatcher.submit(await admit(decode(SubmitRequest, req.data)))
        except TooLarge as exc:
            await self._error(req, 400, str(exc), reason="too large")
        except (BadPayload, Rejected) as exc:
            await self._error(req, 400, str(exc))
        except ValidationError as exc:
            await self._error(req, 400, f"invalid params: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
        except OperationExists as exc:
            await self._error(req, 409, str(exc))
        except Exception as exc:
            # The status API's answers: 503 for JetStream electing a leader past the budget, 500 else.
            if transient_js_error(exc, nc=self.nc):
                log.warning("ktrdr.ops.submit: JetStream unavailable: %s", exc)
                await self._error(req, 503, unavailable_message(exc), retry_after=RETRY_AFTER_S)
            else:
                log.exception("ktrdr.ops.submit failed")
                await self._error(req, 500, f"submission failed: {exc}")
        else:
            await req.respond(op.encode())

    async def _get(self, req: Request) -> None:
        try:
            op_id = decode(GetRequest, req.data).op_id
        except BadPayload as exc:
            await self._error(req, 400, str(exc))
            return
        op = self.ops.get(op_id)
        if op is None:
            await self._error(req, 404, f"unknown operation {op_id}")
        else:
            await req.respond(op.encode())

    async def _list(self, req: Request) -> None:
        try:
            query = decode(ListRequest, req.data) if req.data.strip() else ListRequest()
        except BadPayload as exc:
            await self._error(req, 400, str(exc))
            return
        # Paged below the payload: a reply over it is not sent at all (MaxPayloadError).
        page = self.ops.page(query)
        await req.respond(page.encode())
