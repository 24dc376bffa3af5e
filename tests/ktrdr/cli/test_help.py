"""Every command's ``--help`` as a new user reads it: values named by metavars (N, DATE, FRACTION),
never by Python types (``<bool>``, ``<list[str]>``); help on every option; an example; groups whose
summary names every command they hold; arguments written one way (OP_ID, [FILE], OP_ID...)."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from ktrdr.cli.app import app

# Python types as newer typer prints them beside a value: <bool>, <int>, <list[str]>, <int range>...
PYTHON_TYPE = re.compile(r"<(bool|int|float|str|path|datetime|uuid|list\[[^\]]*\]|[a-z]+ range)>")
# What a metavar looks like: NAME, OP_ID, NAME=VALUE, FILE.
METAVAR = re.compile(r"^[A-Z][A-Z0-9_=@.]*$")


def _commands() -> list[tuple[str, ...]]:
    """Every command and group of the ``ktrdr`` tree, as the words that name it (the root is ``()``)."""
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                walk(sub, (*path, name))

    walk(root, ())
    return found


def _command(path: tuple[str, ...]) -> object:
    command: object = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _help(path: tuple[str, ...]) -> str:
    done = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert done.exit_code == 0, done.output
    return done.output


def _problems(path: tuple[str, ...]) -> list[str]:
    command = _command(path)
    text = _help(path)
    problems = [f"prints the Python type {m.group(0)}" for m in PYTHON_TYPE.finditer(text)]
    if "Example" not in text:
        problems.append("has no example (a last paragraph 'Example: ktrdr ...')")
    usage = next((line for line in text.splitlines() if "Usage:" in line), "")
    if "{" in usage:
        problems.append(f"writes an argument in braces: {usage.strip()}")
    for param in getattr(command, "params", []):
        if getattr(param, "hidden", False):
            continue
        flag = getattr(param, "is_flag", False)
        if param.param_type_name == "option":
            if not (param.help or "").strip():
                problems.append(f"{param.opts[0]} has no help")
            if not flag and (param.metavar is None or not METAVAR.match(param.metavar)):
                problems.append(f"{param.opts[0]} has no metavar (N, DATE, NAME...): {param.metavar!r}")
        elif param.param_type_name == "argument":
            if param.metavar is None or not METAVAR.match(param.metavar):
                problems.append(f"argument {param.name} has no metavar (OP_ID, FILE...): {param.metavar!r}")
            if not (getattr(param, "help", None) or "").strip():
                problems.append(f"argument {param.metavar or param.name} has no help")
    if "\n" in inspect.cleandoc(command.help or "").split("\n\n")[0]:  # type: ignore[attr-defined]
        problems.append("its first paragraph spans lines: its parent's command list would print it broken")
    subcommands = sorted(getattr(command, "commands", {}))
    if subcommands and path:  # a group: its summary (what its parent lists) names every command in it
        summary = (command.help or "").split("\n\n")[0]  # type: ignore[attr-defined]
        missing = [name for name in subcommands if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", summary)]
        if missing:
            problems.append(f"its summary {summary!r} leaves out {', '.join(missing)}")
    return problems


COMMANDS = _commands()


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("ktrdr", *p)))
def test_help_names_values_documents_every_option_and_shows_an_example(path: tuple[str, ...]) -> None:
    problems = _problems(path)
    assert not problems, f"`{' '.join(('ktrdr', *path, '--help'))}`: " + "; ".join(problems)


def test_the_walk_reaches_every_command() -> None:
    names = {" ".join(p) for p in COMMANDS}
    for expected in ("ops list", "backtest run", "backtest sweep", "data synth", "models show", "strategies list",
                     "worker backtest", "fleet invite", "train", "workers"):
        assert expected in names


def test_flags_take_no_value_and_show_none() -> None:
    text = _help(("ops", "list"))
    line = next(line for line in text.splitlines() if "--active" in line)
    assert "<bool>" not in line and "BOOL" not in line.upper().replace("BOOLEAN", "")
    assert re.search(r"--limit\s+N\b", text) and re.search(r"--status\s+STATUS\b", text)
