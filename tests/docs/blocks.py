"""The code blocks of the docs that say what a test does with them, by the words after the language:

- ```` ```bash check ````: it must parse: ``bash -n``, and every ``ktrdr`` command by the CLI's own
  parser (tests/docs/test_command_blocks.py);
- ```` ```bash run ````: the README's tour, run in order against a fresh ``ktrdr up``
  (tests/docs/test_readme.py); ``run nats`` blocks need the ``nats`` CLI, which the test stands in
  for with nats.js;
- ```` ```bash up ````: the README's ``ktrdr up`` line, which that test starts the platform with.

Every ``run`` and ``up`` block is checked as well. A block with no such word is prose.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

MARKS = frozenset({"check", "run", "up", "nats"})
FENCE = re.compile(r"^( *)```(\w+)?((?: [\w-]+)*)\s*$")  # indented too: a block inside a list item
# What a doc writes for a value the reader fills in: <op>, <sweep op>, <walkforward op>.
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of its first line of code, 1-based
    language: str
    marks: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent = fence.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        code = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        found.append(Block(path, i + 2, fence.group(2) or "", frozenset(fence.group(3).split()), "\n".join(code)))
        i = end + 1
    return found


def marked(*marks: str, pages: list[Path] | None = None) -> list[Block]:
    """Blocks carrying any of ``marks``, in page order and then in order within a page."""
    return [b for page in pages or doc_pages() for b in blocks(page) if b.marks & set(marks)]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text, as words: split at ``;``, ``&&``, ``||``, ``|`` and ``&``,
    variable assignments before a command dropped, each ``$(...)`` a command of its own."""
    text, inner = _substitutions(PLACEHOLDER.sub("X", text.replace("\\\n", " ")))
    found = [c for sub in inner for c in commands(sub)]
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|"):
                found.append(current)
                current = []
            elif token and set(token) <= set("<>"):
                next(lexer, None)  # a redirection and its target are no words of the command
            else:
                current.append(token)
        found.append(current)
    return [_without_assignments(c) for c in found if _without_assignments(c)]


def _substitutions(text: str) -> tuple[str, list[str]]:
    """``text`` with each ``$(...)`` replaced by a word, and what they held (quotes and nested
    parentheses inside them respected: ``$(python3 -c 'print(1)')``)."""
    outer: list[str] = []
    inner: list[str] = []
    i = 0
    while (start := text.find("$(", i)) >= 0:
        outer.append(text[i:start])
        depth, j, quote = 1, start + 2, ""
        while j < len(text) and depth:
            c = text[j]
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            j += 1
        inner.append(text[start + 2:j - 1])
        outer.append("SUBST")
        i = j
    outer.append(text[i:])
    return "".join(outer), inner


def _without_assignments(words: list[str]) -> list[str]:
    i = 0
    while i < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[i]):
        i += 1
    return words[i:]


def ktrdr_commands(block: Block) -> list[list[str]]:
    """The ``ktrdr`` commands of a block, without the word ``ktrdr``."""
    return [words[1:] for words in commands(block.text) if words[0] == "ktrdr"]
