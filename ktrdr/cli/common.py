"""Plumbing every ``ktrdr`` command shares: settings, a connected client, exit codes, submit-and-follow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import nats.errors
import typer

from ktrdr.cli.follow import follow
from ktrdr.cli.render import EXIT_BAD_INPUT, EXIT_UNREACHABLE, console, fail, to_json
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import KtrdrError
from ktrdr.client.requests import Invalid, prepare
from ktrdr.client.settings import ClientSettings
from subjects import names
from subjects.fields import TIMEFRAMES
from subjects.models import Operation, OpStatus

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
# What every timeframe option says (subjects.fields: the timeframes ktrdr knows, in one place).
TIMEFRAME_HELP = f"Bar timeframe: {', '.join(TIMEFRAMES)}."
WideOpt = Annotated[bool, typer.Option("--wide", "-w", help="Show every column, even when the table is wider than the "
                                       "terminal (by default columns that do not fit are left out, and named).")]


def _valid_op_id(value: str) -> str:
    # Checked before anything connects: a mistyped id is a usage error (exit 2), not a traceback.
    try:
        return names.validate_token(value, what="operation id")
    except names.InvalidToken as exc:
        raise typer.BadParameter(str(exc)) from None


OpIdArg = Annotated[str, typer.Argument(metavar="OP_ID", callback=_valid_op_id, help="An operation id (`ktrdr ops "
                                                                                   "list` shows them).")]
SweepIdArg = Annotated[str, typer.Argument(metavar="SWEEP_ID", callback=_valid_op_id, help="A sweep's operation id.")]


def settings() -> ClientSettings:
    s = ClientSettings()
    if s.context_problem:
        fail(s.context_problem)
    return s


def run_client(work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run ``work`` with a connected client; platform errors become a message and exit code."""
    s = settings()

    async def main() -> T:
        try:
            async with AsyncClient.from_settings(s) as c:
                return await work(c)
        except (nats.errors.Error, ConnectionError) as exc:
            # A connection lost mid-command (nats-server stopped): the platform's state, said in one line.
            raise KtrdrError(f"lost the connection to NATS at {s.nats_url}: {exc or type(exc).__name__}", 503) from None

    try:
        return asyncio.run(main())
    except KtrdrError as exc:
        fail(exc, exit_code(exc))
    except asyncio.CancelledError:
        raise typer.Exit(130) from None


def exit_code(exc: KtrdrError) -> int:
    """2 for what the user can fix in the request, 3 for a platform that did not answer or could not take it."""
    return EXIT_BAD_INPUT if exc.code in (400, 403, 404, 409, 422) else EXIT_UNREACHABLE


def exit_for(op: Operation) -> None:
    """Exit codes of a followed op: 0 completed, 1 failed, 130 cancelled."""
    if op.status is OpStatus.FAILED:
        raise typer.Exit(1)
    if op.status is OpStatus.CANCELLED:
        raise typer.Exit(130)


def checked(op_type: str, fields: dict[str, Any]) -> Any:
    """``fields`` as ``op_type``'s params, checked as the client checks them (ktrdr.client.requests):
    a request the user can fix exits 2 naming the field, before anything connects."""
    try:
        return prepare(op_type, fields)
    except Invalid as exc:
        fail(str(exc))


# Looks after a submitted op (e.g. ``data fetch`` waiting for an IB host): told whether the op is being
# followed; returns why it gave up on the op (after cancelling it), else None.
Guard = Callable[[AsyncClient, Operation, bool], Coroutine[Any, Any, str | None]]


def submit_and_maybe_follow(op_type: str, params: dict[str, Any], *, follow_it: bool, json: bool,
                            guard: Guard | None = None) -> Operation:
    """Submit; with ``follow_it`` follow to the end and exit with the op's outcome code. ``guard`` runs
    beside the following (once, without it): an op it gave up on exits 3 with its reason."""
    gave_up: str | None = None

    async def work(c: AsyncClient) -> Operation:
        nonlocal gave_up
        op = await c.submit(op_type, params)
        if not json:
            console.print(f"submitted [bold]{op.op_id}[/] ({op.route_reason})")
        if not follow_it:
            if guard is not None:
                await guard(c, op, False)
            return op
        watching = asyncio.create_task(guard(c, op, True)) if guard is not None else None
        try:
            op = await follow(c, op.op_id, quiet=json)
            if watching is not None and op.status is OpStatus.CANCELLED:
                # Perhaps by the guard, whose cancel was answered before the op's end reached us.
                with contextlib.suppress(TimeoutError):
                    gave_up = await asyncio.wait_for(asyncio.shield(watching), timeout=2.0)
        finally:
            if watching is not None:
                watching.cancel()
                if watching.done() and not watching.cancelled():
                    watching.exception()  # looked at: a guard that failed leaves no "never retrieved" warning
        return op

    op = run_client(work)
    if json:
        print(to_json(op))
    if gave_up is not None:
        fail(gave_up, EXIT_UNREACHABLE)
    if follow_it:
        exit_for(op)
    return op
