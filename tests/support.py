"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator.app import Coordinator
from ktrdr.dummy import run_dummy
from ktrdr.runtime.context import JobContext
from subjects.models import Operation, OpStatus
from subjects.params import DummyParams
from subjects.results import DummyResult


async def assert_eventually(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition not met",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"{message} (after {timeout} s; last value {last!r})")
        await asyncio.sleep(interval)


async def wait_status(coordinator: Coordinator, op_id: str, *statuses: OpStatus, timeout: float = 10.0) -> Operation:
    def check() -> Operation | None:
        op = coordinator.ops.get(op_id)
        return op if op is not None and op.status in statuses else None

    try:
        return await assert_eventually(check, timeout=timeout,
                                       message=f"{op_id} never reached {[s.value for s in statuses]}")
    except AssertionError as exc:
        # The record as it is now, not as it was when the wait began.
        raise AssertionError(f"{exc}; the op now: {coordinator.ops.get(op_id)}") from None


def auth_headers(coordinator: Coordinator) -> dict[str, str]:
    """What a status API client sends: the token the coordinator resolved at start."""
    return {"Authorization": f"Bearer {coordinator.api_token}"}


async def dummy_standin(ctx: JobContext, params: object) -> DummyResult:
    """The dummy handler standing in for any type's (in tests that only route, kill or freeze
    workers): it reads the job's params as a dummy's, so a real type's params fail it, as before."""
    return await run_dummy(ctx, DummyParams.model_validate(ctx.job.params))


def standin_handlers(capabilities: list[str], **handlers: Any) -> dict[Any, Any]:
    """A handler for every type the capabilities carry: the dummy's for ``dummy``, the stand-in for
    the others, and ``handlers`` (by type name) over them."""
    from ktrdr.optypes import op_type, types_on
    from ktrdr.optypes.dummy import DUMMY

    served: dict[Any, Any] = {t: run_dummy if t is DUMMY else dummy_standin for c in capabilities for t in types_on(c)}
    return {**served, **{op_type(name): h for name, h in handlers.items()}}


async def claim_as(nc: Any, op_id: str, attempt: int, worker_id: str) -> None:
    """Take the attempt's claim for ``worker_id``, as a worker does before it reports (the coordinator
    takes an attempt's first report only from its claimant). An existing claim is left as it is."""
    from nats.js.errors import KeyWrongLastSequenceError

    from subjects import names
    from subjects.models import Claim

    claims = await nc.jetstream().key_value(names.CLAIMS_BUCKET)
    try:
        await claims.create(names.claim_key(op_id, attempt),
                            Claim(op_id=op_id, attempt=attempt, worker_id=worker_id).encode())
    except KeyWrongLastSequenceError:
        pass
