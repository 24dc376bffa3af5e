"""How an op's progress is shown while a client waits for it: a bar in a terminal (rich) or in a
notebook (an HTML bar updated in place), fed by what :meth:`AsyncClient.watch` yields.

The CLI's ``--follow`` and a notebook's ``handle.wait(progress=True)`` draw the same words from the
same updates; only the surface differs.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from subjects.models import Operation, OpEvent, OpStatus, ProgressUpdate

Update = Operation | ProgressUpdate | OpEvent


class ProgressView(Protocol):
    def update(self, item: Update) -> None: ...

    def close(self, final: Operation | None) -> None: ...


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


class _State:
    """Percentage and words, folded from the updates in the order they come."""

    def __init__(self) -> None:
        self.percentage: float | None = None
        self.text = "reading its record"

    def fold(self, item: Update) -> None:
        if isinstance(item, Operation):
            if item.progress and item.progress.percentage is not None:
                self.percentage = item.progress.percentage
            described = record_description(item)
            if described is not None:
                self.text = described
        elif isinstance(item, ProgressUpdate):
            if item.percentage is not None:
                self.percentage = item.percentage
            self.text = describe(item)
        elif item.event == "started":
            self.text = f"started on {item.worker_id} (attempt {item.attempt})"

    def end(self, final: Operation | None) -> None:
        if final is not None and final.status is OpStatus.COMPLETED:
            self.percentage, self.text = 100.0, "done"
        elif final is not None:
            self.text = final.status.value


class TerminalView:
    """A rich progress bar on ``console`` (stderr unless given); ``quiet`` draws nothing."""

    def __init__(self, op_id: str, *, console: Console | None = None, quiet: bool = False) -> None:
        self._state = _State()
        self._bar = Progress(TextColumn("[bold]{task.fields[op]}"), BarColumn(), TaskProgressColumn(),
                             TimeElapsedColumn(), TextColumn("{task.description}"),
                             console=console or Console(stderr=True), transient=False, disable=quiet)
        self._bar.start()
        self._task = self._bar.add_task(self._state.text, total=100, op=op_id)

    def _draw(self) -> None:
        # completed=None leaves the bar's progress as it is.
        self._bar.update(self._task, description=self._state.text, completed=self._state.percentage)

    def update(self, item: Update) -> None:
        self._state.fold(item)
        self._draw()

    def close(self, final: Operation | None) -> None:
        self._state.end(final)
        self._draw()
        self._bar.stop()


class NotebookView:
    """An HTML bar in the notebook cell's output, replaced in place (IPython's display handles need
    no widget library); redrawn at most ``every_s`` apart so a chatty op does not flood the kernel."""

    def __init__(self, op_id: str, *, every_s: float = 0.2) -> None:
        from IPython.display import HTML, display

        self._html, self._op_id, self._every_s = HTML, op_id, every_s
        self._state = _State()
        self._drawn_at = 0.0
        self._handle = display(self._html(self._markup()), display_id=True)

    def _markup(self) -> str:
        pct = self._state.percentage
        bar = (f'<progress value="{pct:.1f}" max="100" style="width:16em"></progress> {pct:.0f}%'
               if pct is not None else '<progress style="width:16em"></progress>')
        return (f'<div class="ktrdr-progress"><b>{html.escape(self._op_id)}</b> {bar} '
                f"{html.escape(self._state.text)}</div>")

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn_at >= self._every_s:
            self._drawn_at = now
            if self._handle is not None:
                self._handle.update(self._html(self._markup()))

    def update(self, item: Update) -> None:
        self._state.fold(item)
        self._draw()

    def close(self, final: Operation | None) -> None:
        self._state.end(final)
        self._draw(force=True)


class NoView:
    def update(self, item: Update) -> None:
        pass

    def close(self, final: Operation | None) -> None:
        pass


def in_notebook() -> bool:
    """Running in a Jupyter kernel (not IPython in a terminal)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip: Any = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def view_for(op_id: str, progress: bool | ProgressView) -> ProgressView:
    """``progress``: True for the surface this process has (a notebook's or a terminal's), False for
    none, or a view of the caller's own."""
    if progress is False:
        return NoView()
    if progress is True:
        return NotebookView(op_id) if in_notebook() else TerminalView(op_id)
    return progress
