"""The README's tour runs as it is written, in order, on a fresh ``ktrdr up``: what it says runs, runs.

Its ``bash up`` line starts the platform (on free ports instead of its own, in a home of its own);
then its ``bash run`` blocks run in one shell, in order, reading the context ``ktrdr up`` wrote as a
reader's terminal would. The ``bash run nats`` blocks need the ``nats`` CLI, a Go program that cannot
be installed here: they run with ``nats`` standing for tests/docs/natsjs/nats.mjs, which makes the
same calls with nats.js, the NATS project's JavaScript client, and checks that each line's credential
is the least that may make its call. Without Node or nats.js those skip, saying how to install them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ktrdr.natsd import free_port
from tests.conftest import ROOT
from tests.docs.blocks import Block, commands, marked

README = ROOT / "README.md"
NATS_JS = ROOT / "tests" / "docs" / "natsjs"
NATS_JS_PACKAGES = ("transport-node", "jetstream", "kv", "obj", "services")
UP_TIMEOUT_S = 120.0
TOUR_TIMEOUT_S = 180.0
# Left out of the README's `ktrdr up`: a training worker loads torch, seconds of CPU on CI's 2 cores,
# and nothing in the tour trains.
LIGHTER = ("--training-workers", "0", "--no-gpu")


@dataclass(frozen=True)
class Platform:
    home: Path
    work: Path  # where the tour runs: what it writes (plots, CSVs) stays out of the checkout
    env: dict[str, str]
    log: Path


def _env(home: Path) -> dict[str, str]:
    """A reader's terminal: the venv's commands first, nothing pointing anywhere but ``ktrdr up``'s context."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTRDR_", "NATS_"))}
    return env | {"KTRDR_HOME": str(home), "COLUMNS": "120",
                  "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}


def _on_free_ports(words: list[str]) -> list[str]:
    """The README's ``ktrdr up`` words with each port it names replaced by a free one."""
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word in ("--nats-port", "--api-port", "--monitor-port"):
            out[i + 1] = str(free_port())
    return out


def _wait_for(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout:g} s)")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    [up] = marked("up", pages=[README])
    [words] = commands(up.text)
    assert words[:2] == ["ktrdr", "up"], f"{up.where}: a `bash up` block holds the README's `ktrdr up` line"
    root = tmp_path_factory.mktemp("readme")
    (root / "work").mkdir()
    home, log = root / "home", root / "up.log"
    env = _env(home)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", *_on_free_ports(words)[1:], *LIGHTER],
                                cwd=root / "work", env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_for(f"the README's `ktrdr up` ({up.where}) never said it was up",
                  lambda: proc.poll() is not None or "ktrdr is up" in log.read_text(), UP_TIMEOUT_S)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Platform(home=home, work=root / "work", env=env, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_in_order(blocks: list[Block], platform: Platform, **env: str) -> subprocess.CompletedProcess[str]:
    """The blocks as one shell script, as typed into one terminal; a failure names the README's line."""
    script = ["set -Eeuo pipefail", 'trap \'echo "tour failed at script line $LINENO: $BASH_COMMAND" >&2\' ERR']
    where: dict[int, str] = {}
    for block in blocks:
        for offset, line in enumerate(block.text.splitlines()):
            script.append(line)
            where[len(script)] = f"README.md:{block.line + offset}"
    path = platform.work / "tour.sh"
    path.write_text("\n".join(script) + "\n")
    try:
        done = subprocess.run(["bash", str(path)], cwd=platform.work, env=platform.env | env, capture_output=True,
                              text=True, timeout=TOUR_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the tour ran past {TOUR_TIMEOUT_S:g} s; its output: {exc.stdout!r} {exc.stderr!r}"
                             ) from None
    failed = re.search(r"tour failed at script line (\d+): (.*)", done.stderr)
    if done.returncode != 0:
        at = where.get(int(failed.group(1)), "?") if failed else "?"
        raise AssertionError(f"{at}: exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n"
                             f"{done.stderr[-4000:]}\n--- ktrdr up\n{platform.log.read_text()[-2000:]}")
    return done


def tour(*, nats: bool) -> list[Block]:
    return [b for b in marked("run", pages=[README]) if ("nats" in b.marks) == nats]


def nats_js_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Node 20+: /usr/bin/node on the project's machines)"
    missing = [p for p in NATS_JS_PACKAGES if not (NATS_JS / "node_modules" / "@nats-io" / p).is_dir()]
    if missing:
        return (f"nats.js is not installed (@nats-io/{', @nats-io/'.join(missing)}): "
                f"`npm install --prefix {NATS_JS.relative_to(ROOT)} --no-package-lock` installs it")
    return None


@pytest.fixture
def nats_cli(tmp_path: Path) -> dict[str, str]:
    """``nats`` on the PATH, standing for the nats.js stand-in, checking each credential is the least."""
    if (why := nats_js_missing()) is not None:
        pytest.skip(f"the README's `nats` lines run through nats.js: {why}")
    (tmp_path / "bin").mkdir()
    wrapper = tmp_path / "bin" / "nats"
    wrapper.write_text(f'#!/bin/sh\nexec node "{NATS_JS / "nats.mjs"}" "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
            "NATS_STANDIN_LEAST": "1"}


def test_the_readme_tour_runs_in_order_on_a_fresh_ktrdr_up(platform: Platform) -> None:
    blocks = tour(nats=False)
    assert blocks, "the README has a tour"
    done = run_in_order(blocks, platform)
    assert "completed" in done.stdout  # the followed ops ended well, not merely ended
    assert re.search(r"'parameters': \{'fast': \d+, 'slow': \d+\}", done.stdout), done.stdout[-2000:]


def test_the_readmes_nats_lines_run_from_nats_js_each_with_the_least_credential(
        platform: Platform, nats_cli: dict[str, str]) -> None:
    blocks = tour(nats=True)
    assert blocks, "the README shows the nats CLI"
    done = run_in_order(blocks, platform, **nats_cli)
    assert '"accepted":true' in done.stdout.replace(" ", "")  # the cancel took


def test_the_nats_stand_in_refuses_more_credential_than_a_call_needs_and_calls_it_does_not_know(
        platform: Platform, nats_cli: dict[str, str]) -> None:
    url = json.loads((platform.home / "contexts" / "default.json").read_text())["nats_url"]
    too_much = Block(README, 0, "bash", frozenset({"run"}), f'nats --nkey "{platform.home}/auth/client.nk" micro ls')
    with pytest.raises(AssertionError, match="client.nk is more than this call needs: with viewer.nk it was let "
                                             "through"):
        run_in_order([too_much], platform, NATS_URL=url, **nats_cli)
    unknown = subprocess.run(["nats", "server", "ls"], env=platform.env | nats_cli, capture_output=True, text=True,
                             timeout=30)
    assert unknown.returncode == 2 and "teach tests/docs/natsjs/nats.mjs" in unknown.stderr
