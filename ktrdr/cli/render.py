"""Rich rendering shared by CLI commands."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, NoReturn

import typer
from rich import box as boxes
from rich.box import Box
from rich.cells import cell_len
from rich.console import Console, ConsoleDimensions, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from subjects.models import Operation, OpStatus, WorkerLease

# Piped (stdout not a terminal, COLUMNS unset), lines are as long as they are: a table row is one line
# for `grep` and `awk`, never wrapped at 80 columns.
NATURAL_WIDTH = 10_000


class CliConsole(Console):
    """The CLI's console: at a terminal (or with COLUMNS set) its width; piped, :data:`NATURAL_WIDTH`.

    It never crops what it prints: a table wider than the terminal (``--wide``, or ids that alone do
    not fit) is printed whole and the terminal wraps it, rather than losing the end of an id."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._width is None and "COLUMNS" not in os.environ and not self.is_terminal:
            return ConsoleDimensions(NATURAL_WIDTH, size.height)
        return size  # type: ignore[no-any-return]

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, crop: bool = False, **kwargs: Any) -> None:  # noqa: A003
        super().print(*objects, crop=crop, **kwargs)


console = CliConsole(emoji=False)  # `:b:` in a range or an id is text, not an emoji
# Errors go to stderr, never wrapped: one line that a script can grep and a user can read whole.
errors = Console(stderr=True, soft_wrap=True, emoji=False)

# Exit codes every command shares (docs/reference/cli.md).
EXIT_BAD_INPUT = 2  # a bad request, an unknown id, a refused role
EXIT_UNREACHABLE = 3  # the platform (or the part a command needs) is not reachable


def error_line(message: object) -> str:
    """``message`` as one line: a multi-line message (a validation report) is joined with ``; ``, a
    heading that ends in a colon with a space (``invalid strategy x.yaml: rules: ...; fast: ...``)."""
    line = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            line += part if not line else (" " if line.endswith(":") else "; ") + part
    return line


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


def timestamp(value: object) -> str:
    """Every time the CLI prints, in one format: ``YYYY-MM-DD HH:MM:SS``, UTC (a naive time is UTC);
    ``-`` for none. An ISO string is read first; anything else is shown as it is."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if not isinstance(value, datetime):  # pandas' NaT is a datetime, but has no time to show
        return str(value)
    if value != value:  # NaT
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@cache
def _commands() -> dict[str, str]:
    """Op type -> the command that makes it (``backtesting`` -> ``backtest run``), from the declarations."""
    from ktrdr.optypes import op_types

    return {t.name: t.cli.removeprefix("ktrdr ") for t in op_types() if t.cli}


def type_label(op_type: str) -> str:
    """An op type with the command that makes it where the names differ: ``backtesting (backtest run)``,
    ``training (train)``; ``sweep`` (made by ``backtest sweep``) and ``dummy`` as they are."""
    command = _commands().get(op_type)
    if command is None or command.split()[-1] == op_type:
        return op_type
    return f"{op_type} ({command})"


# --- tables that fit ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Col:
    """A column of a :class:`FitTable`.

    ``wrap``: the values fold at spaces, never inside a word; else each value line stays whole on one
    line (ids, numbers, times). ``drop``: 0, always shown; otherwise, when the table is too wide for
    the terminal, columns give way in order, the highest ``drop`` first."""

    header: str
    drop: int = 0
    wrap: bool = False
    justify: Literal["left", "center", "right"] = "left"
    style: str | None = None


class FitTable:
    """A table laid out for the width it is printed at: ids whole, other values folded at word
    boundaries, and columns dropped (the highest ``drop`` first, named in the caption) rather than
    split. ``wide`` keeps every column; at :data:`NATURAL_WIDTH` (piped) every column has its natural
    width. Cells are rich markup (``status_text``) or :class:`Text`."""

    def __init__(self, *columns: Col, title: str | Text | None = None, caption: str | None = None,
                 wide: bool = False, wide_option: str | None = "--wide", box: Box | None = boxes.HEAVY_HEAD,
                 pad_edge: bool = True, show_header: bool = True,
                 header_style: str | None = "table.header") -> None:
        self.columns = columns
        self.title = title
        self.caption = caption
        self.wide = wide
        self.wide_option = wide_option
        self.box = box
        self.pad_edge = pad_edge
        self.show_header = show_header
        self.header_style = header_style
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str | Text | None) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([c if isinstance(c, Text) else Text.from_markup("-" if c is None else c, emoji=False)
                          for c in cells])

    def _overhead(self, n: int) -> int:
        """Borders and padding of ``n`` columns (rich's padding is one space on each side)."""
        if n == 0:
            return 0
        borders = 0 if self.box is None else 2 + n - 1
        return borders + (2 * n if self.pad_edge else 2 * n - 2)

    def _needs(self, index: int) -> tuple[int, int]:
        """The narrowest and the natural width of a column: its longest word (wrapped) or line."""
        column = self.columns[index]
        texts = ([column.header] if self.show_header else []) + [row[index].plain for row in self.rows]
        lines = [line for text in texts for line in text.split("\n")]
        longest = max((cell_len(line) for line in lines), default=1)
        if not column.wrap:
            return max(longest, 1), max(longest, 1)
        word = max((cell_len(w) for line in lines for w in line.split()), default=1)
        return max(word, 1), max(longest, 1)

    def layout(self, width: int) -> tuple[list[int], list[int]]:
        """The columns shown (indexes) and their widths (without padding) at ``width``."""
        needs = [self._needs(i) for i in range(len(self.columns))]
        kept = list(range(len(self.columns)))
        giving_way = sorted((i for i, c in enumerate(self.columns) if c.drop),
                            key=lambda i: (-self.columns[i].drop, -i))
        if not self.wide:
            while giving_way and sum(needs[i][0] for i in kept) + self._overhead(len(kept)) > width:
                kept.remove(giving_way.pop(0))
        room = width - self._overhead(len(kept))
        widths = [needs[i][1] for i in kept]
        if sum(widths) > room:
            widths = [needs[i][0] for i in kept]
            spare = room - sum(widths)
            while spare > 0:  # to the folded column furthest from its natural width, one cell at a time
                j = max(range(len(kept)), key=lambda j: needs[kept[j]][1] - widths[j])
                if needs[kept[j]][1] <= widths[j]:
                    break
                widths[j] += 1
                spare -= 1
        return kept, widths

    def _table(self, kept: list[int], widths: list[int]) -> Table:
        hidden = [c.header for i, c in enumerate(self.columns) if i not in kept]
        notes = [self.caption] if self.caption else []
        if hidden:
            notes.append(f"hidden at this width: {', '.join(hidden)}"
                         + (f" ({self.wide_option} shows them)" if self.wide_option else ""))
        table = Table(title=self.title, caption="\n".join(notes) or None, box=self.box, pad_edge=self.pad_edge,
                      show_header=self.show_header, header_style=self.header_style)
        for i, w in zip(kept, widths, strict=True):
            c = self.columns[i]
            table.add_column(c.header, width=w, no_wrap=not c.wrap, overflow="fold", justify=c.justify,
                             style=c.style)
        for row in self.rows:
            table.add_row(*(row[i] for i in kept))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        kept, widths = self.layout(options.max_width)
        total = sum(widths) + self._overhead(len(kept))
        # A title or caption word wider than the table (an op id) widens the last column: never folded.
        words = [w for note in (self.title, self.caption) if note is not None
                 for w in (note if isinstance(note, Text) else Text.from_markup(note)).plain.split()]
        short = max((cell_len(w) for w in words), default=0) - total
        if short > 0 and widths:
            widths[-1] += short
            total += short
        yield from console.render(self._table(kept, widths), options.update_width(total))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        needs = [self._needs(i) for i in range(len(self.columns))]
        fixed = [n for n, c in zip(needs, self.columns, strict=True) if not c.drop]
        overhead = self._overhead(len(fixed))
        return Measurement(sum(n[0] for n in fixed) + overhead,
                           sum(n[1] for n in needs) + self._overhead(len(needs)))


def workers_table(workers: list[WorkerLease], *, wide: bool = False) -> FitTable:
    table = FitTable(
        Col("id"), Col("type", drop=3), Col("status"), Col("GPU", drop=5, wrap=True),
        Col("capabilities", drop=6, wrap=True), Col("slots", drop=4, justify="right"),
        Col("operations", drop=1, wrap=True), Col("host", drop=7), Col("heartbeat", drop=2),
        Col("started", drop=8), title=f"{len(workers)} worker(s), times UTC", wide=wide)
    for w in workers:
        gpu = "-"
        if w.gpu:
            gpu = (w.device_name or "yes") + (f" {w.device_memory_mb} MiB" if w.device_memory_mb else "")
        table.add_row(w.worker_id, w.worker_type, w.state.value, escape(gpu), ", ".join(w.capabilities),
                      str(w.slots), ", ".join(f"{r.op_id}#{r.attempt}" for r in w.running) or "-",
                      escape(f"{w.host}:{w.pid}"), ago(w.heartbeat_at), timestamp(w.started_at))
    return table


def ops_table(ops: list[Operation], total: int, *, capped: bool = False, wide: bool = False) -> FitTable:
    # Ids are what a user pastes into the next command: never cut; the other columns give way.
    table = FitTable(
        Col("id"), Col("type", drop=1, wrap=True), Col("status"), Col("progress", drop=3, justify="right"),
        Col("worker", drop=5), Col("attempt", drop=6), Col("route", drop=7), Col("created", drop=4),
        title=f"{len(ops)} of {total:,}{'+' if capped else ''} operation(s), times UTC", wide=wide)
    for op in ops:
        pct = op.progress.percentage if op.progress and op.progress.percentage is not None else None
        table.add_row(op.op_id, type_label(op.type), status_text(op.status), "-" if pct is None else f"{pct:.0f}%",
                      op.worker_id or "-", f"{op.attempt}/{op.max_attempts}", op.route or "-",
                      timestamp(op.created_at))
    return table


def op_details(op: Operation) -> FitTable:
    table = FitTable(Col("", style="bold"), Col("", wrap=True), show_header=False,
                     title=f"operation {op.op_id}, times UTC")
    rows: list[tuple[str, str]] = [
        ("type", escape(type_label(op.type))), ("status", status_text(op.status)), ("parent", op.parent_id or "-"),
        ("worker", op.worker_id or "-"), ("attempt", f"{op.attempt} of {op.max_attempts}"),
        ("route", escape(f"{op.route or '-'} ({op.route_reason or ''})")),
        ("params", escape(kv_line(op.params, width=1000)) or "-"),
        ("created", timestamp(op.created_at)), ("started", timestamp(op.started_at)),
        ("completed", timestamp(op.completed_at)),
    ]
    if op.duration_s is not None:
        rows.append(("duration", f"{op.duration_s:.3f} s"))
    if op.progress:
        p = op.progress
        pct = "-" if p.percentage is None else f"{p.percentage:.1f}%"
        rows.append(("progress", escape(f"{pct} {p.step or ''} {p.message or ''}".strip())))
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
