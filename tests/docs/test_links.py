"""Every relative link of the docs leads somewhere: to a file of the checkout and, with a ``#``, to a
heading of that page (as GitHub makes its anchors), so moving a page or renaming a heading breaks here."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT
from tests.docs.blocks import doc_pages

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#+ (.*)", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken(page: Path) -> list[str]:
    problems = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code are code
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # another site's page: not this checkout's to keep
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no {_shown(file)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {_shown(file)}")
    return problems


def test_every_relative_link_of_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    problems = {str(page.relative_to(ROOT)): found for page in doc_pages() if (found := broken(page))}
    assert problems == {}


def test_a_link_to_a_missing_page_or_heading_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[here](#a-page) [gone](missing.md) [nowhere](#no-such) [ok](page.md#a-page)\n")
    assert broken(page) == ["missing.md: no missing.md", "#no-such: no heading #no-such in page.md"]
