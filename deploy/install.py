"""What deploy/Dockerfile runs inside the build to put ktrdr into /opt (standard library only).

``install.py requirements REQUIRES [NAME...]``: ktrdr's runtime requirements, from REQUIRES (its
``Requires-Dist`` lines, which deploy/build.py copies out of its wheel), less extras and the NAMEs.
``requirements REQUIRES torch`` is the backtest image's list: pyproject keeps torch a dependency (so
``pip install -e .`` stays the whole platform) and the image leaves it out.

``install.py unused-tools``: pip, setuptools and wheel, unless an installed distribution requires them.

``install.py app WHEEL DIR``: ktrdr's own (pure-Python) wheel unpacked into DIR, compiled, with its
console scripts in DIR/bin run by this interpreter. It lives apart from the dependencies' venv (which
finds it through a .pth file) so that a change of ktrdr's code rebuilds a layer of a few MB, not the venv.
"""

from __future__ import annotations

import compileall
import configparser
import re
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def name_of(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return canon(match.group(1)) if match else ""


def requirements(requires: list[str], without: set[str]) -> list[str]:
    return [req for req in (r.strip() for r in requires)
            if req and "extra" not in req.partition(";")[2] and name_of(req) not in without]


def unused_tools() -> list[str]:
    installed = {canon(d.metadata["Name"]) for d in distributions()}
    needed = {name_of(req) for d in distributions() for req in d.requires or []
              if "extra" not in req.partition(";")[2]}
    return sorted(t for t in ("pip", "setuptools", "wheel") if t in installed and t not in needed)


def app(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
        entry_points = next((n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        scripts = configparser.ConfigParser()
        if entry_points:
            scripts.read_string(z.read(entry_points).decode())
    compileall.compile_dir(str(target), quiet=1)
    (target / "bin").mkdir(exist_ok=True)
    for name, ref in (scripts["console_scripts"].items() if scripts.has_section("console_scripts") else []):
        module, _, func = ref.partition(":")
        script = target / "bin" / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["requirements"] and len(args) >= 2:
        with open(args[1]) as f:
            print("\n".join(requirements(f.read().splitlines(), {canon(a) for a in args[2:]})))
    elif args == ["unused-tools"]:
        print("\n".join(unused_tools()))
    elif args[:1] == ["app"] and len(args) == 3:
        app(Path(args[1]), Path(args[2]))
    else:
        sys.exit(__doc__)
