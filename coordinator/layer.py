"""The operations layer: submit, get, list and cancel, as every transport calls them.

The status API (its routes and the fast :class:`coordinator.api.SubmitEndpoint`) and the NATS service
``ktrdr.ops.*`` call these and nothing below them; every failure leaves here as an
:class:`coordinator.errors.OpError` (the one table in ``coordinator.errors``), so each transport only
writes it out in its own way.
"""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client

from coordinator.admission import admit
from coordinator.dispatcher import Dispatcher
from coordinator.errors import Conflict, Internal, InvalidRequest, NoAnswer, NotFound, Unavailable, op_error
from coordinator.operations import OperationExists, Operations
from coordinator.retention import Retention
from ktrdr.durations import parse_duration
from ktrdr.optypes.lookups import Lookups
from subjects import names
from subjects.models import (
    CancelReply,
    CancelRequest,
    ListRequest,
    Operation,
    OpList,
    PruneReply,
    PruneRequest,
    SubmitRequest,
    decode,
)

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0


class OpsLayer:
    def __init__(self, *, ops: Operations, dispatcher: Dispatcher, nc: Client, retention: Retention,
                 lookups: Lookups | None = None) -> None:
        self.ops = ops
        self.dispatcher = dispatcher
        self.nc = nc
        self.retention = retention
        self.lookups = lookups  # what admission checks params against (coordinator.lookups)

    async def submit(self, request: SubmitRequest) -> Operation:
        """Admit (``coordinator.admission``) and dispatch; the op as recorded.

        A client that chose the op id may send the same submission again when it never got an answer (a
        dropped connection): if that id already holds the same type, params and parent, the existing op
        is the answer and nothing is queued twice. The same id with anything else stays a conflict (409).
        """
        try:
            admitted = await admit(request, self.lookups)
            if admitted.op_id is not None and (existing := self._same(admitted)) is not None:
                return existing
            try:
                return await self.dispatcher.submit(admitted, admitted=True)
            except OperationExists:
                # Created by a concurrent copy of this very request between the look-up and the write.
                if (existing := self._same(admitted)) is not None:
                    return existing
                raise
        except Exception as exc:
            error = op_error(exc, nc=self.nc)
            if isinstance(error, Unavailable):
                log.warning("submission: JetStream unavailable: %s", exc)
            elif isinstance(error, Internal):
                log.error("submission failed", exc_info=exc)
            raise error from None

    def _same(self, request: SubmitRequest) -> Operation | None:
        """The op already recorded under the request's id, if it is this submission again; raises
        :class:`Conflict` when the id holds another one."""
        assert request.op_id is not None
        if request.op_id in self.ops.withdrawing:
            # An earlier try was refused (503) and its record, if stored after all, is being removed:
            # answering with it would name an op about to vanish. The client tries again shortly.
            raise Unavailable(f"operation {request.op_id}: an earlier try is still being withdrawn")
        existing = self.ops.get(request.op_id)
        if existing is None:
            return None
        same = (existing.type == request.type and existing.params == request.params
                and existing.parent_id == request.parent_id
                and request.max_attempts in (None, existing.max_attempts))
        if not same:
            raise Conflict(f"operation {request.op_id} already exists with another type, params or parent")
        log.info("%s: submitted again with the same content; answering with the existing op", request.op_id)
        return existing

    def get(self, op_id: str) -> Operation:
        op = self.ops.get(op_id)
        if op is None:
            raise NotFound(f"unknown operation {op_id}")
        return op

    async def prune(self, request: PruneRequest) -> PruneReply:
        """Archive or delete ended ops older than ``request.older_than`` (``coordinator.retention``)."""
        try:
            older_than = parse_duration(request.older_than)
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="older_than") from None
        try:
            report = await self.retention.prune(older_than=older_than, action=request.action,
                                                dry_run=request.dry_run, limit=request.limit)
        except Exception as exc:
            error = op_error(exc, nc=self.nc)
            if isinstance(error, Internal):
                log.error("prune failed", exc_info=exc)
            raise error from None
        return PruneReply.model_validate(report.to_dict())

    def page(self, query: ListRequest) -> OpList:
        # Paged: at most MAX_LIST_PAGE_OPS and MAX_LIST_PAGE_BYTES of them (a NATS reply over the
        # payload is not sent at all).
        return self.ops.page(query)

    async def cancel(self, op_id: str, cancel: CancelRequest) -> CancelReply:
        """Ask ``ops.<id>.cancel``, the same path as ``nats req``."""
        try:
            names.validate_token(op_id, what="operation id")
        except names.InvalidToken as exc:
            raise InvalidRequest(str(exc), field="op_id") from None
        try:
            msg = await self.nc.request(names.ops_cancel(op_id), cancel.encode(), timeout=CANCEL_TIMEOUT_S)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise NoAnswer(f"no answer to the cancel request: {exc}") from None
        return decode(CancelReply, msg.data)
