"""``ktrdr up``: the whole platform on one machine, stopped cleanly with Ctrl-C.

Secure by default with nothing to set up: the embedded nats-server runs the config that
:func:`ktrdr.security.fleet.provision` writes (a credential per role, the server enforcing each
role's permissions) and listens on loopback; each child gets its role's credential. Listening
beyond loopback (``--listen``) requires TLS, with certificates from the fleet's own CA or the
user's. It says it is up, and writes the CLI's context, only once the coordinator answers on its
status API (``ktrdr.cli.up_ready``); each component's output is kept in ``$KTRDR_HOME/logs``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ktrdr.cli.render import EXIT_BAD_INPUT, EXIT_UNREACHABLE, console, print_error
from ktrdr.cli.up_children import Child, log_name
from ktrdr.cli.up_ready import wait_until_ready
from ktrdr.client.context import DEFAULT_CONTEXT, Context, write_context
from ktrdr.client.settings import ClientSettings
from ktrdr.natsd import NatsServer, port_open
from ktrdr.runtime.cpus import available_cpus
from ktrdr.runtime.retry import RetryPolicy
from ktrdr.security.api_token import load_or_create_token
from ktrdr.security.fleet import Fleet, provision, write_fleet_file
from ktrdr.security.hosts import clear_pid, write_pid
from ktrdr.security.tls import TlsFiles
from subjects import roles

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::")
# A crashed component is restarted after 1, 2, 4 ... up to 30 s: a crash loop must not spin.
RESTART_RETRY = RetryPolicy(first_s=1.0, max_s=30.0)
# How long `ktrdr up` waits for its coordinator to answer before it gives up: its start took ~18 s on
# a loaded 2-core machine (issue 24), so a minute or two is not a sign of trouble.
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True, kw_only=True)
class Listen:
    """Where the embedded nats-server listens, and its TLS."""

    host: str = "127.0.0.1"
    tls: bool | None = None  # None: on unless the host is loopback
    names: tuple[str, ...] = ()  # the names and addresses other hosts reach this one by
    own_tls: TlsFiles | None = None

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    @property
    def use_tls(self) -> bool:
        return self.tls if self.tls is not None else not self.loopback

    @property
    def local_host(self) -> str:
        """Where this host's own components connect: the address listened on, 127.0.0.1 for a wildcard
        (a server listening on one address only is not reachable at 127.0.0.1)."""
        if self.host in WILDCARD or self.host == "localhost":
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    def advertised(self, port: int) -> list[str]:
        scheme = "tls" if self.use_tls else "nats"
        hosts = list(self.names) or ([] if self.host in WILDCARD else [self.host]) or ["127.0.0.1"]
        return [f"{scheme}://{h}:{port}" for h in hosts]


def run_up(*, settings: ClientSettings, explicit_nats: bool, nats_port: int, monitor_port: int | None, api_port: int,
           backtest_workers: int, training_workers: int, gpu: bool | None, listen: Listen | None = None,
           context: str = DEFAULT_CONTEXT, ready_timeout_s: float = READY_TIMEOUT_S) -> int:
    """``monitor_port``: serve nats-server's monitoring endpoint there, or not at all (None). It is off
    unless asked for: it has no auth, and nats-server answers it with ``Access-Control-Allow-Origin: *``
    (no option turns that off), so any web page the user opens could read op ids and consumer names.

    It says it is up, and writes the context, only once the coordinator answers ``GET /health``; if it
    does not within ``ready_timeout_s``, it says so naming the coordinator's log, stops everything and
    returns 3."""
    home = settings.home
    listen = listen or Listen()
    server: NatsServer | None = None
    fleet: Fleet | None = None
    nats_url = settings.nats_url
    if not listen.loopback and not listen.use_tls:
        print_error(f"refusing to listen on {listen.host} without TLS: anyone on the network could read every "
                    "credential-bearing connection. Drop --no-tls.")
        return EXIT_BAD_INPUT
    wanted = {"the status API (--api-port)": api_port}
    if not explicit_nats:
        wanted |= {"NATS (--nats-port)": nats_port}
        if monitor_port is not None:
            wanted |= {"NATS monitoring (--monitor-port)": monitor_port}
    if len(set(wanted.values())) < len(wanted):
        print_error("two components would share a port: " + ", ".join(f"{port} for {what}" for what, port in
                                                                   wanted.items()))
        return EXIT_BAD_INPUT
    # NATS listens where --listen says (the only place its port can be taken); the rest on loopback.
    busy = [f"{port} for {what}" for what, port in wanted.items()
            if port_open(listen.local_host.strip("[]") if what.startswith("NATS (") else "127.0.0.1", port)]
    if busy:
        print_error(f"port already in use: {', '.join(busy)}. Another `ktrdr up`? Stop it, pick other ports, or set "
                    "KTRDR_NATS_URL to use a running nats-server.")
        return EXIT_BAD_INPUT
    if not explicit_nats:
        # The monitoring endpoint has no auth of its own: loopback only, whatever --listen says.
        fleet = provision(home, tls=listen.use_tls, tls_names=[*listen.names, *([listen.host] if listen.host not in
                          WILDCARD else [])], own_tls=listen.own_tls,
                          monitor=None if monitor_port is None else f"127.0.0.1:{monitor_port}")
        server = NatsServer(store_dir=home / "nats", host=listen.host, port=nats_port,
                            log_file=home / "nats-server.log", config_file=fleet.config)
        (home / "nats").mkdir(parents=True, exist_ok=True)
        server.start()
        write_pid(home, server.pid or 0)  # `ktrdr fleet invite/revoke` reload it
        nats_url = f"{'tls' if listen.use_tls else 'nats'}://{listen.local_host}:{nats_port}"
        write_fleet_file(home, urls=listen.advertised(nats_port), tls=listen.use_tls)
    elif not settings.nats_creds:
        console.print(f"[yellow]warning:[/] {nats_url} is used without a credential (KTRDR_NATS_CREDS): a server "
                      "without auth lets anyone who reaches it read, forge or delete everything")
    api_token_file = home / "auth" / "api.token"
    api_host = settings_api_host()
    api_url = f"http://{'127.0.0.1' if api_host in WILDCARD else api_host}:{api_port}"
    api_token = os.environ.get("KTRDR_API_TOKEN") or load_or_create_token(api_token_file)
    load_or_create_token(api_token_file.with_name("api-viewer.token"))
    base_env = {**os.environ, "KTRDR_NATS_URL": nats_url, "KTRDR_HOME": str(home)}
    if "KTRDR_THREADS" not in os.environ:
        # Each worker's share of this host's CPUs for torch and BLAS (ktrdr.runtime.cpus): alone, each
        # would size its pools to the whole machine, and together they would run many more threads than CPUs.
        local_slots = (backtest_workers + training_workers) * int(os.environ.get("KTRDR_SLOTS") or 1)
        base_env["KTRDR_THREADS"] = str(max(1, available_cpus().cpus // max(1, local_slots)))

    def env(role: str, **extra: str) -> dict[str, str]:
        return {**base_env, **(fleet.env(role) if fleet else {}), **extra}

    # The coordinator would retry an unreachable server for ever, and nothing here would say why.
    unreachable = cannot_reach(nats_url, env(roles.COORDINATOR), home)
    if unreachable:
        print_error(f"the coordinator cannot connect to NATS at {nats_url}: {unreachable}" + (
            "" if server else " (KTRDR_NATS_URL, KTRDR_NATS_CREDS and KTRDR_NATS_CA say where and how)"))
        if server is not None:
            clear_pid(home, server.pid or 0)
            server.stop()
        return EXIT_UNREACHABLE

    logs = home / "logs"

    def component(name: str, module: str, child_env: dict[str, str]) -> Child:
        return Child(name, module, child_env, log_file=logs / log_name(name))

    children = [component("coordinator", "coordinator", env(roles.COORDINATOR, KTRDR_API_PORT=str(api_port)))]
    coordinator = children[0]
    for i in range(backtest_workers):
        children.append(component(f"backtest worker {i}", "worker_backtest",
                                  env(roles.WORKER, KTRDR_WORKER_INDEX=str(i))))
    for i in range(training_workers):
        children.append(component(f"training worker {i}", "worker_training",
                                  env(roles.WORKER, KTRDR_WORKER_INDEX=str(i))))
    gpu_note = "no CUDA or MPS device found"
    if gpu is not False:
        from host_gpu.device import detect_gpu

        device = detect_gpu()
        if device is not None:
            children.append(component("gpu host", "host_gpu", env(roles.WORKER)))
            gpu_note = f"{device.kind}: {device.name}"
        elif gpu:
            console.print("[red]--gpu asked for a GPU host but no CUDA or MPS device is present[/]")
    else:
        gpu_note = "disabled (--no-gpu)"
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def announce() -> None:
        """The table and the dashboard's link: printed once the coordinator answers."""
        table = Table(title="ktrdr is up — Ctrl-C stops everything", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("NATS", f"{nats_url}" + (" (embedded, data in " + str(home / "nats") + ")" if server else ""))
        if server and fleet:
            if monitor_port is not None:
                table.add_row("NATS monitoring", f"http://127.0.0.1:{monitor_port}  (no auth: any web page can "
                              "read it)")
            table.add_row("security", f"credentials per role in {fleet.auth_dir}" + (
                f"; TLS, CA {fleet.tls.ca}" if fleet.tls else "; loopback only (--listen for other hosts)"))
            if not listen.loopback:
                table.add_row("other hosts", ", ".join(listen.advertised(nats_port))
                              + "  (`ktrdr fleet invite worker` prints what they need)")
        table.add_row("status API", f"{api_url}  (/health, /api/v1/..., /metrics; "
                      f"bearer token in {api_token_file})")
        # Written now, not before: whoever waits for the context finds a platform that answers.
        context_file = write_context(home, Context(
            name=context, nats_url=nats_url, api_url=api_url,
            nats_creds=str(fleet.credential_file(roles.CLIENT)) if fleet else None,
            nats_ca=str(fleet.tls.ca) if fleet and fleet.tls else None, api_token_file=str(api_token_file)))
        table.add_row("CLI context", f"{context_file}  (every ktrdr command here uses it: `ktrdr context`)")
        table.add_row("workers", ", ".join(c.name for c in children[1:]))
        table.add_row("GPU", gpu_note)
        table.add_row("logs", f"{logs}  (each component's output, as shown here)")
        table.add_row("try", "ktrdr dummy --duration 5 --follow    ktrdr workers    ktrdr ops list")
        console.print(table)
        # Outside the table, whole on one line to click or paste. The token rides in the fragment,
        # which the browser never sends anywhere: the page signs in with it once, into a cookie.
        print(f"dashboard: {api_url}/#token={api_token}", flush=True)

    def supervise() -> None:
        """Keep the platform up: restart a crashed component, slower each time."""
        for c in children:
            assert c.proc is not None
            exited = c.proc.poll()
            if exited is not None and not stopping:
                c.output_done()
                c.restarts += 1
                delay = RESTART_RETRY.delay(c.restarts - 1)
                console.print(f"[red]{c.name} exited with {exited}; restarting in {delay:g} s[/] (log: {c.log_file})")
                time.sleep(delay)
                c.start()

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        for c in children:
            c.start()
        if api_enabled():
            console.print(f"starting: waiting up to {ready_timeout_s:g} s for the coordinator to answer at "
                          f"{api_url}/health", soft_wrap=True)
            problem = wait_until_ready(api_url, timeout_s=ready_timeout_s, between=supervise,
                                       interrupted=lambda: stopping)
            if problem is not None and not stopping:
                crashes = f"; it exited {coordinator.restarts} time(s)" if coordinator.restarts else ""
                print_error(f"the coordinator did not answer at {api_url}/health within {ready_timeout_s:g} s "
                            f"({problem}{crashes}): see its log, {coordinator.log_file}. Stopping everything.")
                code = EXIT_UNREACHABLE
                stopping = True
        if not stopping:
            announce()
        while not stopping:
            time.sleep(0.2)
            supervise()
        console.print("[yellow]stopping...[/]")
        for child in reversed(children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30.0
        for child in reversed(children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        for child in children:
            child.output_done()
        return code
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
        if server is not None:
            clear_pid(home, server.pid or 0)
            server.stop()
        console.print("ktrdr stopped")


def cannot_reach(url: str, env: dict[str, str], home: Path) -> str | None:
    """Why a component started with ``env`` could not connect to ``url``; None when it can."""
    import asyncio

    from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
    from ktrdr.security.credentials import CredentialError
    from ktrdr.settings import CommonSettings

    async def attempt() -> None:
        creds, ca = env.get("KTRDR_NATS_CREDS"), env.get("KTRDR_NATS_CA")
        settings = CommonSettings(nats_url=url, home=home, nats_creds=Path(creds) if creds else None,
                                  nats_ca=Path(ca) if ca else None)
        nc = await connect(url, name="ktrdr-up-check", auth=NatsAuth.resolve(settings, role=roles.COORDINATOR),
                           reconnect=False, quiet=True, attempts=2, connect_timeout=3.0)
        await nc.close()

    try:
        asyncio.run(attempt())
    except (NatsConnectError, CredentialError) as exc:
        return str(exc)
    return None


def settings_api_host() -> str:
    return os.environ.get("KTRDR_API_HOST", "127.0.0.1")


def api_enabled() -> bool:
    """KTRDR_API_ENABLED as the coordinator's settings read it: without its API there is nothing to wait for."""
    return os.environ.get("KTRDR_API_ENABLED", "true").strip().lower() not in ("0", "false", "f", "no", "n", "off")
