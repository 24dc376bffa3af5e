"""Rich rendering shared by CLI commands."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from subjects.models import Operation, OpStatus, WorkerLease

console = Console()

STATUS_STYLE = {
    OpStatus.PENDING: "yellow", OpStatus.RUNNING: "cyan", OpStatus.COMPLETED: "green",
    OpStatus.FAILED: "red", OpStatus.CANCELLED: "magenta",
}


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
        ("route", f"{op.route or '-'} ({op.route_reason or ''})"), ("params", str(op.params)),
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
        rows.append(("result", str(op.result)))
    if op.error:
        rows.append(("error", f"[red]{op.error}[/]"))
    if op.cancel_reason:
        rows.append(("cancel reason", op.cancel_reason))
    for warning in op.warnings:
        rows.append(("warning", f"[yellow]{warning}[/]"))
    for k, v in rows:
        table.add_row(k, v)
    return table
