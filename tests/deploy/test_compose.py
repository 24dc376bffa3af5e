"""The containerized fleet (deploy/): the images built from a wheelhouse on a locally made base, the
compose file brought up with three backtest workers, the host's CLI reaching it through a context
that `ktrdr context add` wrote, a backtest and a 100-variant sweep run, a worker killed and another
stopped in the middle of an operation, and nothing left behind.

Skipped, saying why, where docker cannot run (no daemon, no compose, no base image and no way to make
or pull one). Cached between runs (``KTRDR_DEPLOY_CACHE``, default ``~/.cache/ktrdr-deploy``): a base
image already in the local docker is reused, the wheelhouse is rebuilt with pip's caches (ktrdr's own
wheel only, unless its requirements changed), and deploy/build.py skips an image whose inputs did not
change. ``pytest -s tests/deploy`` prints how long each part took.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ktrdr.natsd import free_port
from tests.conftest import ROOT

# The images' build on a cold machine is minutes; every step has its own, tighter, bound.
pytestmark = pytest.mark.timeout(1500)

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
CACHE = Path(os.environ.get("KTRDR_DEPLOY_CACHE", Path.home() / ".cache" / "ktrdr-deploy"))
LOCAL_BASE = os.environ.get("KTRDR_TEST_BASE_IMAGE", "ktrdr-base:bookworm")
OFFICIAL_BASE = "python:3.11-slim"
BACKTEST_WORKERS = 3
CONTEXT = "compose-test"
# Every variable that could point the host's CLI elsewhere than the context under test.
FOREIGN = ("KTRDR_NATS_URL", "KTRDR_NATS_CREDS", "KTRDR_NATS_CA", "KTRDR_CONTEXT", "KTRDR_API_URL")


def sh(*args: str, timeout: float = 120, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return done


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if sh("docker", "compose", "version", check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    return None


def docker_problem() -> str | None:
    """Why the containers cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI (apt-get install docker.io docker-compose; .ci/run does)"
    info = sh("docker", "info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"docker cannot run here (no dockerd reachable?): {why}"
    if compose_command() is None:
        return "neither docker-compose nor the docker compose plugin is installed"
    return None


def image_present(name: str) -> bool:
    return sh("docker", "image", "inspect", name, check=False, timeout=30).returncode == 0


def ensure_base(timings: dict[str, float]) -> str:
    """A base image: one already here, else one made with debootstrap (root), else an official one pulled."""
    started = time.monotonic()
    if image_present(LOCAL_BASE):
        return LOCAL_BASE
    if os.geteuid() == 0 and shutil.which("debootstrap"):
        sh("sh", str(ROOT / "deploy" / "base-image.sh"), LOCAL_BASE, timeout=900)
        timings["base image (debootstrap)"] = time.monotonic() - started
        return LOCAL_BASE
    if sh("docker", "pull", OFFICIAL_BASE, check=False, timeout=300).returncode == 0:
        return OFFICIAL_BASE
    pytest.skip(f"no base image: {LOCAL_BASE} is not in the local docker, it takes root and debootstrap to make "
                f"(deploy/base-image.sh), and {OFFICIAL_BASE} cannot be pulled")


@dataclass
class Fleet:
    compose: list[str]
    project: str
    env: dict[str, str]
    home: Path
    timings: dict[str, float] = field(default_factory=dict)
    down: bool = False

    def dc(self, *args: str, timeout: float = 300, check: bool = True,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        return sh(*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args, timeout=timeout, check=check,
                  env=self.env, input=input)

    def ktrdr(self, *args: str, timeout: float = 120, check: bool = True,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The host's CLI, as a user runs it: nothing in its environment but its home and the context."""
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
        env |= {"KTRDR_HOME": str(self.home), "COLUMNS": "200"}
        return sh(sys.executable, "-m", "ktrdr.cli.app", *args, timeout=timeout, check=check, env=env, cwd=ROOT,
                  input=input)

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.ktrdr("--context", CONTEXT, *args, "--json", timeout=timeout).stdout)

    def workers(self) -> list[dict[str, Any]]:
        return self.json("workers")

    def op(self, op_id: str) -> dict[str, Any]:
        return self.json("ops", "show", op_id)

    def containers(self, service: str) -> list[str]:
        """The short ids (= hostnames) of a service's running containers."""
        return [c[:12] for c in self.dc("ps", "-q", service).stdout.split()]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: sh("docker", *cmd, "--filter", label, "-q").stdout.split()
                for kind, cmd in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]),
                                  ("volumes", ["volume", "ls"]))}

    def take_down(self) -> None:
        self.dc("down", "-v", "--remove-orphans", "-t", "10", timeout=180, check=False)
        self.down = True

    def wait_running(self, op_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            op = self.op(op_id)
            if op["status"] == "running" and op.get("worker_id"):
                return op
            assert op["status"] in ("pending", "running"), op
            assert time.monotonic() < deadline, f"{op_id} did not start within {timeout} s: {op}"
            time.sleep(0.5)

    def wait_ended(self, op_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            op = self.op(op_id)
            if op["status"] not in ("pending", "running"):
                return op
            assert time.monotonic() < deadline, f"{op_id} did not end within {timeout} s: {op}"
            time.sleep(1.0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    compose = compose_command()
    assert compose is not None
    timings: dict[str, float] = {}
    started = time.monotonic()
    build = [sys.executable, str(ROOT / "deploy" / "build.py"), "--wheelhouse", str(CACHE / "wheelhouse")]
    # The wheelhouse (pip, on the host) while the base is made or found (debootstrap, in docker).
    wheels = subprocess.Popen([*build, "--wheels-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = ensure_base(timings)
        out, err = wheels.communicate(timeout=900)
    finally:
        if wheels.poll() is None:
            wheels.kill()
            wheels.wait()
    assert wheels.returncode == 0, f"pip wheel failed:\n{out[-3000:]}\n{err[-3000:]}"
    timings["base and wheelhouse"] = time.monotonic() - started
    # The images (deploy/build.py skips those whose inputs did not change).
    t = time.monotonic()
    done = sh(*build, "--json", "--base", base, *(["--network", "default"] if base == OFFICIAL_BASE else []),
              timeout=1200)
    images = json.loads(done.stdout)
    timings["images"] = time.monotonic() - t
    for target, info in images.items():
        timings[f"  {target} image {'built' if info['built'] else 'unchanged'}, {info['size_bytes'] / 1e6:.0f} MB"] = (
            info["seconds"])
    env = {**{k: v for k, v in os.environ.items() if k not in FOREIGN},
           "KTRDR_NATS_PORT": str(free_port()), "KTRDR_API_PORT": str(free_port()),
           "KTRDR_IMAGE": images["backtest"]["image"], "KTRDR_BACKTEST_IMAGE": images["backtest"]["image"],
           "KTRDR_TRAINING_IMAGE": images["training"]["image"]}
    f = Fleet(compose=compose, project=f"ktrdrtest{secrets.token_hex(4)}", env=env,
              home=tmp_path_factory.mktemp("host-home"), timings=timings)
    try:
        t = time.monotonic()
        f.dc("up", "-d", "--scale", f"backtest-worker={BACKTEST_WORKERS}", "--scale", "training-worker=1")
        timings["compose up"] = time.monotonic() - t
        t = time.monotonic()
        bundle = f.dc("run", "--rm", "-T", "provision", "--bundle").stdout
        added = f.ktrdr("context", "add", CONTEXT, "--from", "-", input=bundle)
        assert f"context {CONTEXT} written" in added.stdout, added.stdout
        timings["context from the provision service"] = time.monotonic() - t
        yield f
    finally:
        if not f.down:
            if sys.exc_info()[0] is not None or os.environ.get("KTRDR_DEPLOY_LOGS"):
                print(f.dc("logs", "--tail", "40", check=False).stdout[-8000:])
            f.take_down()
        timings["total"] = time.monotonic() - started
        print("\ncontainer test timings (s):\n" + "\n".join(f"  {k}: {v:.1f}" for k, v in timings.items()))


def test_the_scaled_workers_are_listed_with_distinct_ids(fleet: Fleet) -> None:
    started = time.monotonic()
    deadline = started + 120
    while True:
        found = fleet.workers()
        kinds = sorted(w["worker_type"] for w in found)
        if kinds == ["backtest"] * BACKTEST_WORKERS + ["training"]:
            break
        assert time.monotonic() < deadline, f"workers after 120 s: {found}"
        time.sleep(1)
    fleet.timings["workers registered"] = time.monotonic() - started
    ids = {w["worker_id"] for w in found}
    assert len(ids) == BACKTEST_WORKERS + 1
    # <hostname>-<type>-<index>, a container's hostname being its id: one id per container.
    assert {i.split("-")[0] for i in ids if "-backtest-" in i} == set(fleet.containers("backtest-worker"))
    assert {i.split("-")[0] for i in ids if "-training-" in i} == set(fleet.containers("training-worker"))
    # Each container holds a host key of its own from the pool: no two act as one fleet host.
    held = re.findall(r"holding the host credential (\S+)\.nk", fleet.dc("logs", "backtest-worker",
                                                                          "training-worker").stdout)
    assert len(set(held)) == len(held) == BACKTEST_WORKERS + 1, held
    # The dashboard's API answers with the same workers (the token from the bundle, on the published port).
    token = (fleet.home / "contexts" / CONTEXT / "api.token").read_text().strip()
    import httpx

    reply = httpx.get(f"http://127.0.0.1:{fleet.env['KTRDR_API_PORT']}/api/v1/workers",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["total"] == BACKTEST_WORKERS + 1


def test_a_backtest_and_a_100_variant_sweep_complete(fleet: Fleet) -> None:
    started = time.monotonic()
    synth = fleet.ktrdr("--context", CONTEXT, "data", "synth", "--symbol", "SYN", "--timeframe", "1h",
                        "--bars", "3000", "--seed", "1", "--json")
    assert json.loads(synth.stdout)["bucket"]["published"] is True, synth.stdout
    backtest = fleet.json("backtest", "run", "sma_crossover", "--symbol", "SYN", "--timeframe", "1h", "--follow")
    assert backtest["status"] == "completed", backtest
    sweep = fleet.json("backtest", "sweep", "sma_crossover", "-s", "SYN", "-t", "1h", "-p", "fast=5:50:5",
                       "-p", "slow=20:200:20", "--follow", timeout=300)
    assert sweep["status"] == "completed", sweep
    assert (sweep["result"]["combinations"], sweep["result"]["completed"]) == (100, 100), sweep["result"]
    fleet.timings["synth, backtest and 100-variant sweep"] = time.monotonic() - started


def test_a_killed_worker_s_operation_is_retried_on_another(fleet: Fleet) -> None:
    started = time.monotonic()
    op_id = fleet.json("dummy", "--duration", "12", "--steps", "12")["op_id"]
    running = fleet.wait_running(op_id)
    victim = running["worker_id"]
    sh("docker", "kill", victim.split("-")[0])
    ended = fleet.wait_ended(op_id)
    assert ended["status"] == "completed", ended
    first, *rest = ended["attempts"]
    assert first["worker_id"] == victim and first["outcome"].startswith("lost"), ended["attempts"]
    assert rest and rest[-1]["worker_id"] != victim and rest[-1]["outcome"] == "completed", ended["attempts"]
    fleet.timings["docker kill: retried elsewhere and completed"] = time.monotonic() - started


def test_a_stopped_worker_loses_nothing(fleet: Fleet) -> None:
    started = time.monotonic()
    op_id = fleet.json("dummy", "--duration", "6", "--steps", "6")["op_id"]
    worker = fleet.wait_running(op_id)["worker_id"]
    container = worker.split("-")[0]
    # SIGTERM: the worker finishes its running work within its grace (25 s), then exits.
    sh("docker", "stop", "-t", "45", container, timeout=90)
    state = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
    assert state == "0", f"{worker} exited with {state} on SIGTERM"
    ended = fleet.wait_ended(op_id)
    assert ended["status"] == "completed", ended
    # Nothing stuck: no operation pending or running once everything has ended.
    assert fleet.json("ops", "list", "--active", "--all")["total"] == 0
    fleet.timings["docker stop mid-op: completed"] = time.monotonic() - started


def test_down_leaves_no_container_network_or_volume(fleet: Fleet) -> None:
    started = time.monotonic()
    fleet.take_down()
    left = fleet.leftovers()
    fleet.timings["compose down"] = time.monotonic() - started
    assert left == {"containers": [], "networks": [], "volumes": []}, left
