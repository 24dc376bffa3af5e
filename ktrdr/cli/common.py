"""Plumbing every ``ktrdr`` command shares: settings, a connected client, exit codes, submit-and-follow."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import nats.errors
import typer

from ktrdr.cli.client import KtrdrClient, KtrdrError, to_json
from ktrdr.cli.follow import follow
from ktrdr.cli.render import EXIT_BAD_INPUT, EXIT_UNREACHABLE, console, fail
from ktrdr.cli.settings import CliSettings
from ktrdr.runtime.connection import NatsAuth
from ktrdr.security.credentials import CredentialError
from subjects import names, roles
from subjects.models import Operation, OpStatus

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _valid_op_id(value: str) -> str:
    # Checked before anything connects: a mistyped id is a usage error (exit 2), not a traceback.
    try:
        return names.validate_token(value, what="operation id")
    except names.InvalidToken as exc:
        raise typer.BadParameter(str(exc)) from None


OpIdArg = Annotated[str, typer.Argument(metavar="OP_ID", callback=_valid_op_id, help="An operation id.")]


def settings() -> CliSettings:
    s = CliSettings()
    if s.context_problem:
        fail(s.context_problem)
    return s


def client_auth(s: CliSettings) -> NatsAuth:
    """KTRDR_NATS_CREDS, else the client credential ``ktrdr up`` wrote on this host."""
    try:
        return NatsAuth.resolve(s, role=roles.CLIENT)
    except CredentialError as exc:
        raise KtrdrError(str(exc), 503) from None


def run_client(work: Callable[[KtrdrClient], Awaitable[T]]) -> T:
    """Run ``work`` with a connected client; platform errors become a message and exit code."""
    s = settings()

    async def main() -> T:
        try:
            async with KtrdrClient(nats_url=s.nats_url, timeout=s.request_timeout_s, lease_ttl_s=s.lease_ttl_s,
                                   auth=client_auth(s), source=s.nats_url_source) as c:
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


def strategy_source(strategy: str) -> str:
    """The user's own strategy file is read here and travels as YAML text: the coordinator and the
    workers never read paths. A file is a path (``./my.yaml``, ``~/s/x.yaml``) or a ``.yaml``/``.yml``
    file in the current directory; anything else goes as given: a packaged name, a file name in the
    strategies directory (``KTRDR_STRATEGIES_DIR``) or YAML text."""
    if "\n" in strategy:
        return strategy
    path = Path(strategy).expanduser()
    is_path = "/" in strategy or os.sep in strategy or strategy.startswith("~")
    if path.is_file() and (is_path or path.suffix in (".yaml", ".yml")):
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if is_path and ":" not in strategy:
        raise typer.BadParameter(f"no such file: {path}")
    return strategy


# Looks after a submitted op (e.g. ``data fetch`` waiting for an IB host): told whether the op is being
# followed; returns why it gave up on the op (after cancelling it), else None.
Guard = Callable[[KtrdrClient, Operation, bool], Awaitable[str | None]]


def submit_and_maybe_follow(op_type: str, params: dict[str, Any], *, follow_it: bool, json: bool,
                            guard: Guard | None = None) -> Operation:
    """Submit; with ``follow_it`` follow to the end and exit with the op's outcome code. ``guard`` runs
    beside the following (once, without it): an op it gave up on exits 3 with its reason."""
    gave_up: str | None = None

    async def work(c: KtrdrClient) -> Operation:
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
