"""Did every fact of an older README land somewhere in today's docs? (Not a test: a tool for a move.)

    python tests/docs/check_moved.py [REV]    # default abd0d31, the last README that held everything

Splits the old README, section by section, into units (sentences of prose, table cells, code lines)
and looks for each, with links, emphasis and line breaks taken out, in the README, docs/**/*.md and
bench/README.md. Prints the units found nowhere, by section, and how many of each section's units
moved; exit 1 if any section lost all of them (a section dropped).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def normal(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and pictures: their text
    text = text.replace("*", "").replace("`", "")
    return re.sub(r"\s+", " ", text).strip()


def units(section: str) -> list[str]:
    """Sentences of each paragraph and list item, table cells, code lines."""
    found: list[str] = []
    paragraphs: list[list[str]] = [[]]
    in_code = False
    for line in section.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            paragraphs.append([])
        elif in_code:
            found.append(line.split("  #")[0])
        elif stripped.startswith("|"):
            found += [cell for cell in stripped.strip("|").split("|") if not set(cell.strip()) <= set("-: ")]
            paragraphs.append([])
        elif not stripped or re.match(r"(- |\d+\. )", stripped):
            paragraphs.append([re.sub(r"^(- |\d+\. )", "", stripped)])
        else:
            paragraphs[-1].append(stripped)
    for paragraph in paragraphs:
        found += re.split(r"(?<=[.;!?])\s+(?=[A-Z`*(])", " ".join(paragraph))
    return [n for u in found if len(n := normal(u)) > 12]


def sections(readme: str) -> list[tuple[str, str]]:
    parts = re.split(r"^(#{2,3} .*)$", readme, flags=re.M)
    return [("(top)", parts[0])] + [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def main() -> int:
    rev = sys.argv[1] if len(sys.argv) > 1 else "abd0d31"
    old = subprocess.run(["git", "show", f"{rev}:README.md"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    corpus = normal("\n".join(p.read_text() for p in pages))
    dropped = []
    for title, body in sections(old):
        all_units = units(body)
        missing = [u for u in all_units if u not in corpus]
        print(f"{title}: {len(all_units) - len(missing)} of {len(all_units)} found")
        for unit in missing:
            print(f"    not found: {unit[:160]}")
        if all_units and len(missing) == len(all_units):
            dropped.append(title)
    if dropped:
        print(f"dropped sections: {', '.join(dropped)}")
    return 1 if dropped else 0


if __name__ == "__main__":
    raise SystemExit(main())
