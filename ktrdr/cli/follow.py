"""``follow``: a live progress bar fed by ``ops.<id>.progress``; Ctrl-C cancels the operation."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ktrdr.cli.client import KtrdrClient
from ktrdr.cli.render import console, kv_line, status_text
from subjects.models import Operation, OpEvent, OpStatus, ProgressUpdate

# Notices go to stderr so that `--json` output on stdout stays parseable.
notice = Console(stderr=True)


def describe(update: ProgressUpdate) -> str:
    parts = [update.step or "", update.message or ""]
    ctx = update.context
    # Domain context the workers publish (training epochs, backtest bars): show the useful bits.
    for key in ("epoch", "batch", "running_train_loss", "train_loss", "val_loss", "device", "date", "equity",
                "trades"):
        if key in ctx:
            value = ctx[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(p for p in parts if p)


async def follow(client: KtrdrClient, op_id: str, *, cancel_on_interrupt: bool = True,
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
    final: Operation | None = None
    try:
        with Progress(TextColumn("[bold]{task.fields[op]}"), BarColumn(), TaskProgressColumn(),
                      TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                      transient=False, disable=quiet) as bar:
            task = bar.add_task("reading its record", total=100, op=op_id)
            async for item in client.watch(op_id):
                if isinstance(item, Operation):
                    final = item
                    if item.progress and item.progress.percentage is not None:
                        bar.update(task, completed=item.progress.percentage)
                    described = record_description(item)
                    if described is not None:
                        bar.update(task, description=described)
                elif isinstance(item, ProgressUpdate):
                    if item.percentage is not None:
                        bar.update(task, completed=item.percentage)
                    bar.update(task, description=describe(item))
                elif isinstance(item, OpEvent) and item.event == "started":
                    bar.update(task, description=f"started on {item.worker_id} (attempt {item.attempt})")
            if final is not None and final.status is OpStatus.COMPLETED:
                bar.update(task, completed=100, description="done")
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    assert final is not None
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
        line += f" — {escape(result_line(final.result))}"
    console.print(line)
    for warning in final.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    return final


def record_description(op: Operation) -> str | None:
    """What the bar says from the op's record (None: leave what progress said). A running op says where
    it runs from the record's first read, not only once its first progress message arrives."""
    if op.status is OpStatus.PENDING:
        return f"pending ({op.route_reason or 'queued'})"
    if op.progress and op.progress.message:
        # Ops the coordinator runs (sweeps) publish no progress: their record has it.
        return op.progress.message
    if op.status is OpStatus.RUNNING and op.progress is None:
        where = f"running on {op.worker_id}" if op.worker_id else "running"
        return f"{where} (attempt {op.attempt})" if op.worker_id else where
    return None


async def _cancel(client: KtrdrClient, op_id: str) -> None:
    try:
        reply = await client.cancel(op_id, "cancelled from `ktrdr follow` (Ctrl-C)")
        notice.print(f"[yellow]{reply.message}[/]")
    except Exception as exc:
        notice.print(f"[red]cancel failed: {exc}[/]")


def result_line(result: dict[str, Any], *, width: int = 160) -> str:
    """A result's plain fields on one line (``model=planted@1, symbol=SYN``); nested ones (metrics, a
    sweep's top, a walk-forward's folds) are the command's own tables to show, or `ktrdr ops show`'s."""
    return kv_line(result, width=width, nested=False)
