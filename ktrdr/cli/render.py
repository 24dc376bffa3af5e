"""Rich rendering shared by CLI commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from subjects.models import Operation, OpStatus, WorkerLease

console = Console()
# Errors go to stderr, never wrapped: one line that a script can grep and a user can read whole.
errors = Console(stderr=True, soft_wrap=True)

# Exit codes every command shares (README, *CLI*).
EXIT_BAD_INPUT = 2  # a bad request, an unknown id, a refused role
EXIT_UNREACHABLE = 3  # the platform (or the part a command needs) is not reachable


def error_line(message: object) -> str:
    """``message`` as one line: a multi-line message (a validation report) is joined with ``; ``."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def print_error(message: object) -> None:
    """``error: <message>`` as one line on stderr."""
    errors.print(f"[red]error:[/] {escape(error_line(message))}", highlight=False)


def fail(message: object, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print the error line and exit with ``code`` (inside a command)."""
    print_error(message)
    raise typer.Exit(code)

STATUS_STYLE = {
    OpStatus.PENDING: "yellow", OpStatus.RUNNING: "cyan", OpStatus.COMPLETED: "green",
    OpStatus.FAILED: "red", OpStatus.CANCELLED: "magenta",
}


def short_value(value: object, *, width: int = 40, depth: int = 0) -> str:
    """A value as a user reads it: floats to 4 significant digits, YAML text (an inline strategy) by its
    size, long text cut, small lists and mappings inline (``fast=5,10``), bigger ones by their size."""
    if isinstance(value, float):
        # Whole numbers whole (capital=100000, not 1e+05); others to 4 significant digits.
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, str):
        if "\n" in value:
            return f"<text, {value.count(chr(10)) + 1} lines>"
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, list | tuple):
        if len(value) <= 8 and depth < 2 and all(not isinstance(v, dict) for v in value):
            return ",".join(short_value(v, width=width, depth=depth + 1) for v in value)
        return f"<{len(value)} items>"
    if isinstance(value, dict):
        if len(value) <= 6 and depth < 1:
            return "{" + " ".join(f"{k}={short_value(v, width=width, depth=depth + 1)}" for k, v in value.items()) + "}"
        return f"<{len(value)} keys>"
    return str(value)


def kv_line(values: dict[str, Any], *, width: int = 160, nested: bool = True) -> str:
    """``k=v, k=v`` on one line, never a Python dict. ``nested=False``: nested values are only named
    (a result's metrics or a sweep's ranking have tables of their own)."""
    plain = [f"{k}={short_value(v)}" for k, v in values.items()
             if v is not None and (nested or not isinstance(v, dict | list))]
    others = [] if nested else [k for k, v in values.items() if isinstance(v, dict | list)]
    text = ", ".join(plain) + (f" (and {', '.join(others)})" if others else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def status_text(status: OpStatus) -> str:
    return f"[{STATUS_STYLE[status]}]{status.value}[/]"


def workers_table(workers: list[WorkerLease]) -> Table:
    table = Table(title=f"{len(workers)} worker(s)")
    table.add_column("id", no_wrap=True, min_width=max((len(w.worker_id) for w in workers), default=2))
    for col in ("type", "status", "GPU", "capabilities", "slots", "operations", "host", "heartbeat"):
        table.add_column(col, overflow="fold")
    for w in workers:
        gpu = "-"
        if w.gpu:
            gpu = (w.device_name or "yes") + (f" {w.device_memory_mb} MiB" if w.device_memory_mb else "")
        table.add_row(w.worker_id, w.worker_type, w.state.value, gpu, ", ".join(w.capabilities), str(w.slots),
                      ", ".join(f"{r.op_id}#{r.attempt}" for r in w.running) or "-",
                      f"{w.host}:{w.pid}", ago(w.heartbeat_at))
    return table


def ops_table(ops: list[Operation], total: int, *, capped: bool = False) -> Table:
    table = Table(title=f"{len(ops)} of {total:,}{'+' if capped else ''} operation(s)")
    # Ids are what a user pastes into the next command: never cut; the other columns give way.
    table.add_column("id", no_wrap=True, min_width=max((len(op.op_id) for op in ops), default=2))
    for col in ("type", "status", "progress", "worker", "attempt", "route", "created"):
        table.add_column(col, overflow="fold")
    for op in ops:
        pct = op.progress.percentage if op.progress and op.progress.percentage is not None else None
        table.add_row(op.op_id, op.type, status_text(op.status), "-" if pct is None else f"{pct:.0f}%",
                      op.worker_id or "-", f"{op.attempt}/{op.max_attempts}", op.route or "-", ago(op.created_at))
    return table


def op_details(op: Operation) -> Table:
    table = Table(show_header=False, title=f"operation {op.op_id}")
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("type", op.type), ("status", status_text(op.status)), ("parent", op.parent_id or "-"),
        ("worker", op.worker_id or "-"), ("attempt", f"{op.attempt} of {op.max_attempts}"),
        ("route", f"{op.route or '-'} ({op.route_reason or ''})"),
        ("params", escape(kv_line(op.params, width=1000)) or "-"),
        ("created", str(op.created_at)), ("started", str(op.started_at or "-")),
        ("completed", str(op.completed_at or "-")),
    ]
    if op.duration_s is not None:
        rows.append(("duration", f"{op.duration_s:.3f} s"))
    if op.progress:
        p = op.progress
        pct = "-" if p.percentage is None else f"{p.percentage:.1f}%"
        rows.append(("progress", f"{pct} {p.step or ''} {p.message or ''}".strip()))
    if op.result is not None:
        rows.append(("result", escape(kv_line(op.result, width=1000, nested=False)) or "-"))
    if op.error:
        rows.append(("error", f"[red]{escape(op.error)}[/]"))
    if op.cancel_reason:
        rows.append(("cancel reason", escape(op.cancel_reason)))
    for warning in op.warnings:
        rows.append(("warning", f"[yellow]{escape(warning)}[/]"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def to_json(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    return json.dumps(value, indent=2, default=str)
