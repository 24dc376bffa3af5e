"""Every code block the docs mark as runnable still parses: as shell (``bash -n``), and each ``ktrdr``
command as the CLI's own parser reads it (commands, options, their values), so a renamed command or
option fails here rather than in a reader's terminal. What the marks mean: tests/docs/blocks.py."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import typer

from ktrdr.cli.app import app
from tests.conftest import ROOT
from tests.docs.blocks import MARKS, PLACEHOLDER, Block, blocks, doc_pages, ktrdr_commands, marked

CHECKED = marked("check", "run", "up")


def cli_problem(words: list[str]) -> str | None:
    """Why the CLI would refuse ``ktrdr WORDS`` before running anything; None when it parses."""
    command: Any = typer.main.get_command(app)
    name, args, parent = "ktrdr", list(words), None
    try:
        while True:
            ctx = command.make_context(name, args, parent=parent)
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not hasattr(command, "commands") or not rest:
                return None
            name, command, args = command.resolve_command(ctx, rest)
            parent = ctx
    except typer.Exit:
        return None  # --help, --version: they parse
    except Exception as exc:  # the CLI's usage errors: unknown command, option or value
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message.endswith("does not exist."):
            return None  # a file it names is made by the command before it (`data sample`, then `data import`)
        return f"{type(exc).__name__}: {message}"


def test_the_docs_mark_the_readme_tour_and_the_guides_commands() -> None:
    readme = marked("run", "up", pages=[ROOT / "README.md"])
    assert [sorted(b.marks) for b in readme][:2] == [["up"], ["run"]], "the README's ktrdr up, then its tour"
    assert any("nats" in b.marks for b in readme), "the README's nats lines"
    assert any(b.path.parent.name == "guides" for b in CHECKED), "the guides' command blocks"


def test_only_the_readme_has_blocks_a_test_runs() -> None:
    elsewhere = [b.where for b in marked("run", "up") if b.path != ROOT / "README.md"]
    assert elsewhere == [], "only the README's blocks run (tests/docs/test_readme.py); mark these `check`"


def test_every_mark_is_one_a_test_knows() -> None:
    unknown = [(b.where, sorted(b.marks - MARKS)) for page in doc_pages() for b in blocks(page) if b.marks - MARKS]
    assert unknown == []


@pytest.mark.parametrize("block", [b for b in CHECKED if b.language == "bash"], ids=lambda b: b.where)
def test_the_shell_block_is_valid_shell(block: Block) -> None:
    # A placeholder (<op>) is a value the reader fills in, not a redirection.
    done = subprocess.run(["bash", "-n"], input=PLACEHOLDER.sub("X", block.text), capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 0, f"{block.where}: {done.stderr}"


@pytest.mark.parametrize("block", [b for b in CHECKED if b.language == "python"], ids=lambda b: b.where)
def test_the_python_block_compiles(block: Block) -> None:
    compile(block.text, block.where, "exec")


def test_every_checked_block_is_shell_or_python() -> None:
    assert sorted({b.language for b in CHECKED}) in (["bash"], ["bash", "python"])


@pytest.mark.parametrize("block", [b for b in CHECKED if ktrdr_commands(b)], ids=lambda b: b.where)
def test_every_ktrdr_command_of_the_block_parses(block: Block) -> None:
    problems = [f"ktrdr {' '.join(words)}: {why}" for words in ktrdr_commands(block)
                if (why := cli_problem(words)) is not None]
    assert problems == [], f"{block.where}: " + "; ".join(problems)


def test_a_wrong_command_or_option_is_caught() -> None:
    assert cli_problem(["backtest", "run", "sma_crossover", "--symbol", "SYN"]) is None
    assert "No such command" in (cli_problem(["backtest", "runn", "x"]) or "")
    assert "No such option" in (cli_problem(["backtest", "run", "x", "--symbol", "SYN", "--simbol", "S"]) or "")
    assert "--bars" in (cli_problem(["data", "synth", "--bars", "many"]) or "")
