"""``follow``: a live progress bar fed by ``ops.<id>.progress``; Ctrl-C cancels the operation."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from rich.console import Console
from rich.markup import escape

from ktrdr.cli.render import console, kv_line, status_text
from ktrdr.client.aio import AsyncClient
from ktrdr.client.progress import TerminalView
from subjects.models import Operation, OpStatus

# Notices go to stderr so that `--json` output on stdout stays parseable.
notice = Console(stderr=True)


async def follow(client: AsyncClient, op_id: str, *, cancel_on_interrupt: bool = True,
                 quiet: bool = False) -> Operation:
    """Follow ``op_id`` to its end; ``quiet`` draws nothing (for ``--json``)."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    main = asyncio.current_task()

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and cancel_on_interrupt:
            notice.print(f"[yellow]Ctrl-C: cancelling {op_id} (press again to stop following)[/]")
            loop.create_task(_cancel(client, op_id))
        elif main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        final = await client.op(op_id).follow(progress=TerminalView(op_id, console=console, quiet=quiet))
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if quiet:
        return final
    line = f"{op_id}: {status_text(final.status)}"
    if final.duration_s is not None:
        line += f" in {final.duration_s:.2f} s"
    if final.error:
        line += f" — [red]{escape(final.error)}[/]"
    if final.status is OpStatus.CANCELLED and final.cancel_reason:
        line += f" — {escape(final.cancel_reason)}"
    if final.result:
        line += f" — {escape(result_line(final.result, op_type=final.type))}"
    console.print(line)
    for warning in final.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    return final


async def _cancel(client: AsyncClient, op_id: str) -> None:
    try:
        reply = await client.cancel(op_id, "cancelled from `ktrdr follow` (Ctrl-C)")
        notice.print(f"[yellow]{reply.message}[/]")
    except Exception as exc:
        notice.print(f"[red]cancel failed: {exc}[/]")


def result_line(result: dict[str, Any], *, op_type: str | None = None, width: int = 160) -> str:
    """The outcome's key figures as its op type words them (``return +4.21 %, Sharpe 0.83, ...``), else
    a result's plain fields on one line (``steps=10, duration=5``); nested ones are only named."""
    if op_type is not None:
        from ktrdr.optypes import Rejected
        from ktrdr.optypes import op_type as declared

        try:
            described = declared(op_type).describe_result(result)
        except Rejected:  # a type this CLI does not know (a newer platform's)
            described = None
        if described is not None:
            return described
    return kv_line(result, width=width, nested=False)
