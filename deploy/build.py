#!/usr/bin/env python3
"""Build ktrdr's images from a wheelhouse, with no network inside the build; skip those whose inputs
did not change.

    pip wheel -w build/wheelhouse .                          # on the host, once per change of code or deps
    python3 deploy/build.py --base ktrdr-base:bookworm       # -> ktrdr-backtest:latest, ktrdr-training:latest

Each image is also tagged with a digest of its inputs (the Dockerfile, the two helper scripts, the
base image's id and the wheels' contents, read from their zip directories so that a rebuilt wheel
of the same code matches) and labelled ``org.ktrdr.inputs``; an image with that tag already present
is kept as it is. Standard library only: it runs with any Python 3.8+.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELPERS = ("install.py", "healthcheck.py")
# target -> distributions left out of its venv
TARGETS = {"backtest": ("torch",), "training": ()}
LABEL = "org.ktrdr.inputs"


def docker(*args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=False, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)


def image_id(name: str) -> str | None:
    done = docker("image", "inspect", "-f", "{{.Id}}", name)
    return done.stdout.strip() if done.returncode == 0 else None


def image_size(name: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", name).stdout.strip() or 0)


def build_wheelhouse(wheelhouse: Path, python: str = sys.executable) -> float:
    """``pip wheel`` of this checkout into ``wheelhouse``: ktrdr's own wheel, and its dependencies when
    its requirements changed since the last run (or on the first); pip's caches make those quick too."""
    started = time.monotonic()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for old in wheelhouse.glob("ktrdr-*.whl"):
        old.unlink()
    # setuptools stages the package in build/lib and never empties it: a module deleted from the tree
    # would still ride in the wheel.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    pip = [python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wheelhouse)]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True)
    stamp = wheelhouse / ".ktrdr-requires"
    wanted = requires(next(wheelhouse.glob("ktrdr-*.whl")))
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([*pip, str(ROOT)], check=True)
        stamp.write_text(wanted)
    return time.monotonic() - started


def wheels(wheelhouse: Path) -> list[Path]:
    found = sorted(wheelhouse.glob("*.whl"))
    own = [w for w in found if w.name.startswith("ktrdr-")]
    if not own:
        raise SystemExit(f"no ktrdr wheel in {wheelhouse}: run `pip wheel -w {wheelhouse} .` first")
    newest = max(own, key=lambda w: w.stat().st_mtime)
    return [w for w in found if not w.name.startswith("ktrdr-") or w == newest]


def fingerprint(wheel: Path) -> str:
    """A wheel's contents: its members' names, sizes and CRCs (no timestamps, nothing decompressed)."""
    h = hashlib.sha256(wheel.name.encode())
    with zipfile.ZipFile(wheel) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    return h.hexdigest()


def inputs_digest(target: str, base_id: str, found: list[Path]) -> str:
    h = hashlib.sha256(f"{target}\0{' '.join(TARGETS[target])}\0{base_id}\n".encode())
    for name in ("Dockerfile", *HELPERS):
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    for wheel in found:
        h.update(fingerprint(wheel).encode())
    return h.hexdigest()[:16]


def requires(wheel: Path) -> str:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().split("\n\n", 1)[0].splitlines()
    return "".join(line.split(":", 1)[1].strip() + "\n" for line in lines if line.startswith("Requires-Dist:"))


def context_dir(found: list[Path], where: Path) -> Path:
    """All the build may read: wheels/ (the dependencies; hard links where possible), ktrdr/ (its own
    wheel, installed last so that a change of code rebuilds one layer), requires.txt and the helpers."""
    for wheel in found:
        own = wheel.name.startswith("ktrdr-")
        target = where / ("ktrdr" if own else "wheels") / wheel.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
        if own:
            (where / "requires.txt").write_text(requires(wheel))
    for name in HELPERS:
        shutil.copy2(HERE / name, where / name)
    return where


def prune(repository: str, keep: str) -> None:
    """Earlier builds' digest tags of ``repository`` (their layers that nothing else uses go with them);
    one a container still runs is kept."""
    tags = docker("image", "ls", repository, "--format", "{{.Tag}}").stdout.split()
    for tag in tags:
        if tag != keep and len(tag) == 16 and all(c in "0123456789abcdef" for c in tag):
            docker("image", "rm", f"{repository}:{tag}")


def build(*, base: str, wheelhouse: Path, targets: list[str], prefix: str, network: str,
          quiet: bool = False) -> dict[str, dict[str, object]]:
    base_id = image_id(base)
    if base_id is None:
        done = docker("pull", base)
        base_id = image_id(base)
        if base_id is None:
            raise SystemExit(f"base image {base} is not here and cannot be pulled ({done.stderr.strip()}); make one "
                             "with deploy/base-image.sh")
    found = wheels(wheelhouse)
    out: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="ktrdr-build-") as tmp:
        context: Path | None = None
        for target in targets:
            digest = inputs_digest(target, base_id, found)
            name = f"{prefix}{target}:{digest}"
            started = time.monotonic()
            built = image_id(name) is None
            if built:
                context = context or context_dir(found, Path(tmp) / "context")
                args = ["build", "--network", network, "--target", target, "-f", str(HERE / "Dockerfile"),
                        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"WITHOUT={' '.join(TARGETS[target])}",
                        "--label", f"{LABEL}={digest}", "-t", name, str(context)]
                if quiet:
                    args.insert(1, "-q")
                done = docker(*args, capture=quiet)
                if done.returncode != 0:
                    raise SystemExit(f"docker build of {target} failed:\n{(done.stderr or '')[-4000:]}")
            docker("tag", name, f"{prefix}{target}:latest")
            if built:
                prune(f"{prefix}{target}", keep=digest)
            out[target] = {"image": name, "latest": f"{prefix}{target}:latest", "built": built,
                           "seconds": round(time.monotonic() - started, 1), "size_bytes": image_size(name)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=os.environ.get("KTRDR_BASE_IMAGE", "python:3.11-slim"),
                        help="BASE_IMAGE (default $KTRDR_BASE_IMAGE, else python:3.11-slim)")
    parser.add_argument("--wheelhouse", type=Path, default=ROOT / "build" / "wheelhouse")
    parser.add_argument("--wheels", action="store_true", help="run `pip wheel` into the wheelhouse first")
    parser.add_argument("--wheels-only", action="store_true", help="only that: build no image")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append",
                        help="an image to build (repeatable; default both)")
    parser.add_argument("--prefix", default="ktrdr-", help="image names are PREFIX<target> (default ktrdr-)")
    parser.add_argument("--network", default="none",
                        help="the build's network: none (default; an official base fetches tini with apt, so "
                             "pass `default` there)")
    parser.add_argument("--json", action="store_true", help="print what was built as JSON")
    args = parser.parse_args()
    if args.wheels or args.wheels_only:
        took = build_wheelhouse(args.wheelhouse)
        print(f"wheelhouse {args.wheelhouse}: {took:.0f} s", file=sys.stderr)
        if args.wheels_only:
            return 0
    out = build(base=args.base, wheelhouse=args.wheelhouse, targets=args.target or list(TARGETS), prefix=args.prefix,
                network=args.network, quiet=args.json)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for info in out.values():
            print(f"{info['image']} (also {info['latest']}): {int(info['size_bytes']) / 1e6:.0f} MB, "
                  + (f"built in {info['seconds']} s" if info["built"] else "unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
