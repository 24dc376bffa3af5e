"""The ``ktrdr`` command: platform processes, operations, workers and (later) domain commands."""

from __future__ import annotations

import json as jsonlib
import os
from pathlib import Path
from typing import Annotated

import typer

from ktrdr.cli.common import JsonOpt, OpIdArg, WideOpt, exit_for, run_client, settings, submit_and_maybe_follow
from ktrdr.cli.follow import follow
from ktrdr.cli.helpfmt import plain_metavars
from ktrdr.cli.render import (
    EXIT_BAD_INPUT,
    console,
    fail,
    op_details,
    ops_table,
    print_error,
    timestamp,
    to_json,
    workers_table,
)
from ktrdr.client.context import DEFAULT_CONTEXT
from ktrdr.client.settings import ClientSettings
from ktrdr.logs import quiet_ssl_eof, setup_logging
from ktrdr.optypes.dummy import DUMMY
from subjects.models import OpStatus

plain_metavars()  # --help names values (N, DATE), not Python types (<int>, <bool>)
app = typer.Typer(help="ktrdr: trading-strategy research on a NATS JetStream worker fleet.\n\n"
                       "Times are printed as YYYY-MM-DD HH:MM:SS, UTC.\n\n"
                       "Example: ktrdr up (then, in another terminal) ktrdr dummy --follow",
                  no_args_is_help=True, pretty_exceptions_enable=False)
ops_app = typer.Typer(help="Operations: list, show, follow, cancel, prune, types, submit.\n\n"
                           "Example: ktrdr ops list --active", no_args_is_help=True)
worker_app = typer.Typer(help="Run a worker process: backtest (backtests, sweeps' blocks) or training (CPU "
                              "training).\n\nExample: ktrdr worker backtest", no_args_is_help=True)
host_app = typer.Typer(help="Run a host process: gpu (GPU training) or ib (Interactive Brokers downloads).\n\n"
                            "Example: ktrdr host ib", no_args_is_help=True)
fleet_app = typer.Typer(help="Hosts joining the fleet: server-config, invite, hosts, revoke (credentials and "
                             "certificates).\n\nExample: ktrdr fleet invite worker --host gpu-box --gpu > join.sh",
                        no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
app.add_typer(ops_app, name="ops")
app.add_typer(worker_app, name="worker")
app.add_typer(host_app, name="host")

def _version(value: bool) -> None:
    if value:
        from ktrdr import __version__

        print(f"ktrdr {__version__}")
        raise typer.Exit()


@app.callback()
def _everywhere(
    context: Annotated[str | None, typer.Option(
        "--context", metavar="NAME", help="The platform to talk to: a context name (KTRDR_HOME/contexts/NAME.json, "
                                          "written by `ktrdr up`) or a context file; default KTRDR_CONTEXT, else "
                                          "'default'.")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print ktrdr's version and exit.")] = False,
) -> None:
    if context is not None:
        # Every command builds its settings from the environment: one place, whichever command runs.
        os.environ["KTRDR_CONTEXT"] = context


# --- platform processes -------------------------------------------------------------------------

@app.command()
def up(
    nats_port: Annotated[int, typer.Option(metavar="PORT", help="Port of the embedded nats-server.")] = 4222,
    monitor_port: Annotated[int | None, typer.Option(
        metavar="PORT", help="Also serve the embedded nats-server's monitoring endpoint on 127.0.0.1:PORT. Off by "
                             "default: it has no auth and answers any web page (Access-Control-Allow-Origin: *) with "
                             "op ids and consumer names.")] = None,
    api_port: Annotated[int, typer.Option(metavar="PORT", help="Port of the status API.")] = 8000,
    backtest_workers: Annotated[int, typer.Option(min=0, metavar="N", help="Backtest workers to start.")] = 1,
    training_workers: Annotated[int, typer.Option(min=0, metavar="N", help="CPU training workers to "
                                                                            "start.")] = 1,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="Force or skip the GPU host.")] = None,
    listen: Annotated[str, typer.Option(metavar="ADDRESS", help="Address NATS listens on; beyond loopback (e.g. "
                                                                "0.0.0.0) TLS is required.")] = "127.0.0.1",
    name: Annotated[list[str] | None, typer.Option(
        "--name", metavar="HOST", help="A name or address other hosts reach this one by (repeatable): in the TLS "
                                       "certificate and the URL `ktrdr fleet invite` hands out.")] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="TLS for NATS (default: on unless "
                                                                      "loopback).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(metavar="FILE", help="Your own server certificate (PEM) instead "
                                                                       "of the fleet CA's.")] = None,
    tls_key: Annotated[Path | None, typer.Option(metavar="FILE", help="Its private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(metavar="FILE", help="The CA that signed it (PEM; handed to "
                                                                     "joining hosts).")] = None,
    context: Annotated[str, typer.Option("--context", metavar="NAME", help="The CLI context to write (KTRDR_HOME/"
                                         "contexts/NAME.json): how every other command finds this platform.")
                       ] = DEFAULT_CONTEXT,
    ready_timeout: Annotated[float, typer.Option(
        min=1, metavar="SECONDS", help="How long to wait for the coordinator to answer on its status API before "
                                       "giving up (exit 3, naming its log).")] = 120.0,
) -> None:
    """Start everything: embedded nats-server (unless KTRDR_NATS_URL is set), coordinator and workers.

    It says it is up (and writes the context) once the coordinator answers GET /health. Each component's
    output is also kept in KTRDR_HOME/logs/.

    Example: ktrdr up --nats-port 4223 --api-port 8001 --backtest-workers 2"""
    from ktrdr.cli.up import Listen, run_up
    from ktrdr.security.tls import TlsFiles

    own = [tls_cert, tls_key, tls_ca]
    if any(own) and not all(own):
        fail("--tls-cert, --tls-key and --tls-ca go together")
    setup_logging("WARNING")
    # Not settings(): the context up is about to write must not decide anything about up itself.
    code = run_up(settings=ClientSettings(context=None), context=context,
                  explicit_nats="KTRDR_NATS_URL" in os.environ, nats_port=nats_port,
                  monitor_port=monitor_port, api_port=api_port, backtest_workers=backtest_workers,
                  training_workers=training_workers, gpu=gpu, ready_timeout_s=ready_timeout,
                  listen=Listen(host=listen, tls=True if all(own) else tls, names=tuple(name or ()),
                                own_tls=TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key)
                                if tls_ca and tls_cert and tls_key else None))
    raise typer.Exit(code)


@app.command()
def coordinator() -> None:
    """Run the coordinator (registry, dispatcher, status API on KTRDR_API_PORT).

    Example: KTRDR_NATS_URL=nats://127.0.0.1:4222 ktrdr coordinator"""
    from coordinator.__main__ import main

    raise typer.Exit(main())


NatsOpt = Annotated[str | None, typer.Option("--nats", metavar="URL", help="NATS URL(s), comma separated "
                                                                           "(KTRDR_NATS_URL).")]
CredsOpt = Annotated[Path | None, typer.Option("--creds", metavar="FILE", help="This component's credential, an nkey "
                                                                               "seed file (KTRDR_NATS_CREDS).")]
CaOpt = Annotated[Path | None, typer.Option("--ca", metavar="FILE", help="The CA of the server's TLS certificate "
                                                                         "(KTRDR_NATS_CA).")]


def _run_worker(module: str, nats: str | None = None, creds: Path | None = None, ca: Path | None = None) -> None:
    """Run one component, here or on another host: the options win over the ``KTRDR_*`` variables.

    The component runs as ``python -m MODULE`` in place of this process (same pid, so signals reach
    it): this command has loaded numpy already, and the worker must size numpy's and torch's thread
    pools before they load (ktrdr.runtime.entry). With neither ``--nats`` nor ``KTRDR_NATS_URL``, it
    finds the platform in the context ``ktrdr up`` wrote, as every other command does."""
    import sys

    for var, value in (("KTRDR_NATS_URL", nats), ("KTRDR_NATS_CREDS", creds), ("KTRDR_NATS_CA", ca)):
        if value is not None:
            os.environ[var] = str(value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module])


@worker_app.command("backtest")
def worker_backtest(nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Run a backtest worker (CPU; start as many as you like, on any host).

    Example: ktrdr worker backtest --nats tls://fleet.example:4222 --creds worker.creds --ca ca.pem"""
    _run_worker("worker_backtest", nats, creds, ca)


@worker_app.command("training")
def worker_training(nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Run a CPU training worker.

    Example: ktrdr worker training"""
    _run_worker("worker_training", nats, creds, ca)


@host_app.command("gpu")
def host_gpu(nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Run the GPU host (refuses to start without CUDA or MPS).

    Example: ktrdr host gpu --nats tls://fleet.example:4222 --creds worker.creds --ca ca.pem"""
    _run_worker("host_gpu", nats, creds, ca)


@host_app.command("ib")
def host_ib(nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Run the Interactive Brokers host (its credential is the `ib` role's).

    Example: ktrdr host ib"""
    _run_worker("host_ib", nats, creds, ca)


@fleet_app.command("server-config")
def fleet_server_config(
    out: Annotated[Path, typer.Option(metavar="FILE", help="Where to write it (owner-only). "
                                                           "nats/cluster/secure/*.conf include "
                                                           "nats/cluster/secure/fleet.conf.")],
    tls: Annotated[bool, typer.Option("--tls/--no-tls", help="Serve TLS (clients and cluster routes).")] = True,
    name: Annotated[list[str] | None, typer.Option("--name", metavar="HOST", help="A name or address the servers "
                                                   "are reached by (repeatable).")] = None,
) -> None:
    """Write the auth and TLS blocks for a nats-server you run yourself.

    One nkey user per role, with its permissions, and TLS, e.g. for the three-node cluster in
    nats/cluster/secure. Credentials and the CA are this host's (under KTRDR_HOME), the same that
    `ktrdr fleet invite` hands out.

    Example: ktrdr fleet server-config --out nats/cluster/secure/fleet.conf --name nats1.example"""
    from ktrdr.security.credentials import ensure_credentials, write_private
    from ktrdr.security.hosts import load_hosts
    from ktrdr.security.serverconf import render
    from ktrdr.security.tls import ensure_server_cert, server_names

    s = settings()
    credentials = ensure_credentials(s.auth_dir)
    files = ensure_server_cert(s.tls_dir, server_names(name)) if tls else None
    write_private(out, render(credentials=credentials, hosts=load_hosts(s.auth_dir).values(), tls=files))
    console.print(f"wrote {out}: users for {', '.join(credentials)}" + (f"; TLS with CA {files.ca}" if files else ""))


@fleet_app.command("invite")
def fleet_invite(
    role: Annotated[str, typer.Argument(metavar="ROLE", help="worker (backtest, training, GPU hosts), ib, client "
                                                             "or viewer.")],
    host: Annotated[str | None, typer.Option(
        "--host", metavar="NAME", help="The worker or IB host's name: a key of its own, revoked with `ktrdr fleet "
                                       "revoke`.")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="The worker host may take GPU training jobs.")] = False,
    url: Annotated[str | None, typer.Option(metavar="URL", help="The URL the other host reaches NATS by (default: "
                                                                "what `ktrdr up --listen/--name` advertised).")] = None,
) -> None:
    """Print a shell script that gives another host what it needs to join.

    The script holds the URL, the CA certificate and a credential (a new key of its own for a
    worker or IB host). It holds a secret: hand it over privately.

    Example: ktrdr fleet invite worker --host gpu-box --gpu > join.sh"""
    from ktrdr.security.fleet import apply_hosts, invite, read_fleet_file

    s = settings()
    known = read_fleet_file(s.home) or {}
    urls = known.get("urls") or []
    chosen = url or (urls[0] if isinstance(urls, list) and urls else None)
    if chosen is None:
        fail("no URL: start `ktrdr up --listen 0.0.0.0 --name <this host>` or pass --url")
    ca = s.tls_dir / "ca.pem"
    try:
        script = invite(home=s.home, role=role, url=chosen, ca=ca if known.get("tls") and ca.exists() else None,
                        host=host, gpu=gpu)
    except (ValueError, OSError, RuntimeError) as exc:
        fail(f"{exc}")
    print(script, end="")
    if host:
        pid = apply_hosts(s.home)
        # On stderr: stdout is the script, usually redirected to a file.
        typer.echo(f"host {host} added: nats-server (pid {pid}) reloaded" if pid else
                   f"host {host} added to {s.auth_dir / 'nats-server.conf'}: no `ktrdr up` server runs here, so "
                   "reload yours (nats-server --signal reload)", err=True)


@fleet_app.command("hosts")
def fleet_hosts(json: JsonOpt = False) -> None:
    """The hosts that hold a credential of their own: this machine's (local) and every invited one.

    Example: ktrdr fleet hosts"""
    from ktrdr.security.credentials import ensure_credentials
    from ktrdr.security.hosts import load_hosts, local_hosts

    s = settings()
    try:
        hosts = [*local_hosts(ensure_credentials(s.auth_dir)), *load_hosts(s.auth_dir).values()]
    except ValueError as exc:
        fail(f"{exc}")
    if json:
        print(jsonlib.dumps([{"name": h.name, "role": h.role, "gpu": h.gpu, "public_key": h.public_key,
                              "created_at": h.created_at or None, "local": h.local} for h in hosts], indent=2))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("host", "role", "gpu", "key", "invited"):
        table.add_column(column, no_wrap=True)
    for h in hosts:
        table.add_row(h.name, h.role, "yes" if h.gpu else "no", h.public_key[:12] + "…",
                      "this machine (ktrdr up)" if h.local else timestamp(h.created_at))
    console.print(table)


@fleet_app.command("revoke")
def fleet_revoke(name: Annotated[str, typer.Argument(metavar="HOST", help="The host to cut off (see `ktrdr fleet "
                                                                          "hosts`).")]) -> None:
    """Cut one host off: its key leaves the server's config and the running nats-server reloads it.

    The host's connections close; its workers' leases expire and their operations are retried on
    other workers, as for any lost worker. Nothing else restarts.

    Example: ktrdr fleet revoke gpu-box"""
    from ktrdr.security.fleet import revoke
    from ktrdr.security.hosts import reload_server

    s = settings()
    try:
        host = revoke(s.home, name)
    except ValueError as exc:
        fail(f"{exc}")
    reloaded = reload_server(s.home) is not None
    console.print(f"revoked host {host.name} ({host.role}): " + (
        "nats-server reloaded; its connections are closed and refused from now on" if reloaded else
        f"{s.auth_dir / 'nats-server.conf'} rewritten; reload your nats-server (nats-server --signal reload)"))


# --- reading ------------------------------------------------------------------------------------

@app.command()
def workers(
    type: Annotated[str | None, typer.Option("--type", metavar="TYPE", help="Only workers of this type: backtest, "
                                                                            "training, gpu or ib.")] = None,
    json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """List the workers that hold a lease: what each can run, what it runs now, its last heartbeat.

    Example: ktrdr workers --type backtest"""
    found = run_client(lambda c: c.workers())
    if type:
        found = [w for w in found if w.worker_type == type]
    if json:
        print(to_json(found))
    else:
        console.print(workers_table(found, wide=wide))


@ops_app.command("list")
def ops_list(
    status: Annotated[list[OpStatus] | None, typer.Option(
        metavar="STATUS", help=f"Only this status: {', '.join(s.value for s in OpStatus)} (repeatable).")] = None,
    type: Annotated[str | None, typer.Option("--type", metavar="TYPE", help="Only this operation type, as `ktrdr ops "
                                                                            "types` names it (e.g. backtesting, "
                                                                            "sweep, training).")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only pending and running.")] = False,
    parent: Annotated[str | None, typer.Option("--parent", metavar="OP_ID", help="The children of this operation "
                                               "(a sweep's blocks, a walk-forward's steps).")] = None,
    children: Annotated[bool, typer.Option("--all", help="Children too (hidden by default).")] = False,
    worker: Annotated[str | None, typer.Option("--worker", metavar="WORKER_ID", help="Run by this worker.")] = None,
    since: Annotated[str | None, typer.Option(
        metavar="DATE", help="Created at or after (UTC): a date or date and time, e.g. 2026-11-01 or "
                             "2026-11-01T09:30.")] = None,
    until: Annotated[str | None, typer.Option(metavar="DATE", help="Created at or before (UTC), as --since.")] = None,
    search: Annotated[str | None, typer.Option("--search", metavar="TEXT", help="Text in the id.")] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Archived ones too (past the retention "
                                                                "period).")] = False,
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="Show at most N operations.")] = 50,
    offset: Annotated[int, typer.Option(min=0, metavar="N", help="Skip the N newest first (the next page: "
                                                                 "--offset 50).")] = 0,
    json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """List operations, newest first (child operations only with --parent or --all).

    Each op's type is shown with the command that makes it where their names differ:
    backtesting (backtest run), training (train), data_load (data fetch).

    Example: ktrdr ops list --active --type backtesting"""
    found = run_client(lambda c: c.list(status=status, type=type, active_only=active, parent_id=parent,
                                        include_children=children, worker_id=worker, since=since, until=until,
                                        q=search, include_archived=archived, limit=limit, offset=offset))
    if json:
        print(to_json(found))
    else:
        console.print(ops_table(found.operations, found.total, capped=found.total_capped, wide=wide))


@ops_app.command("show")
def ops_show(op_id: OpIdArg, json: JsonOpt = False) -> None:
    """Show one operation: type, status, where it ran, params, result, times (UTC).

    Example: ktrdr ops show backtesting-1e08cea7dcdb"""
    op = run_client(lambda c: c.get(op_id))
    if json:
        print(to_json(op))
    else:
        console.print(op_details(op))


@ops_app.command("follow")
def ops_follow(op_id: OpIdArg, json: JsonOpt = False) -> None:
    """Follow an operation live; Ctrl-C cancels it (a second Ctrl-C stops following).

    Example: ktrdr ops follow sweep-6b5fedf4d926"""
    op = run_client(lambda c: follow(c, op_id, quiet=json))
    if json:
        print(to_json(op))
    exit_for(op)


@ops_app.command("cancel")
def ops_cancel(op_id: OpIdArg, reason: Annotated[str, typer.Option(
        metavar="TEXT", help="Why: kept on the operation (`ktrdr ops show`).")] = "cancelled by user",
               json: JsonOpt = False) -> None:
    """Cancel an operation (queued ones never start; running ones stop at their next check).

    Example: ktrdr ops cancel sweep-6b5fedf4d926 --reason 'wrong grid'"""
    reply = run_client(lambda c: c.cancel(op_id, reason))
    if not reply.accepted and reply.status is None and not json:
        # No status: the coordinator knows no such op (or refused the request): an error like any other.
        fail(reply.message)
    if json:
        print(to_json(reply))
    else:
        style = "green" if reply.accepted else "yellow"
        console.print(f"[{style}]{'accepted' if reply.accepted else 'not accepted'}[/]: {reply.message}"
                      + (f" (status {reply.status.value})" if reply.status else ""))
    if not reply.accepted:
        # No status: the coordinator knows no such op (or refused the request), a bad request (2) as for
        # every other command; an op that had already ended says its status (1).
        raise typer.Exit(2 if reply.status is None else 1)


@ops_app.command("prune")
def ops_prune(
    older_than: Annotated[str, typer.Option("--older-than", metavar="AGE", help="Age of the ended ops to move out: "
                                                                                "7d, 12h, 30m, 2w.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count and show them; change nothing.")] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Delete (record and results) instead of the "
                                                          "configured action (archive by default).")] = False,
    json: JsonOpt = False,
) -> None:
    """Archive (or delete) ended operations older than an age, as retention does on its own.

    Example: ktrdr ops prune --older-than 30d --dry-run"""
    reply = run_client(lambda c: c.prune(older_than, action="delete" if delete else None, dry_run=dry_run))
    if json:
        print(to_json(reply))
        return
    verb = {"archive": "archived", "delete": "deleted"}[reply.action]
    if reply.dry_run:
        console.print(f"{reply.matched:,} ended operation(s) older than {older_than} would be {verb}"
                      + (f" (e.g. {', '.join(reply.sample[:5])})" if reply.sample else ""))
    else:
        console.print(f"{reply.moved:,} operation(s) {verb}" + (f"; {reply.expired:,} archived past the archive "
                                                                  "period lost their results" if reply.expired else ""))
    if reply.skipped:
        console.print(f"{reply.skipped:,} left: children of a parent still running")


@ops_app.command("types")
def ops_types(json: JsonOpt = False, wide: WideOpt = False) -> None:
    """The operation types this ktrdr declares: where each runs and the command that submits it.

    Example: ktrdr ops types"""
    from rich.markup import escape

    from ktrdr.cli.render import Col, FitTable
    from ktrdr.optypes import op_types

    declared = sorted(op_types(), key=lambda t: t.name)
    if json:
        print(jsonlib.dumps([{"name": t.name, "summary": t.summary,
                              "runs": "coordinator" if t.on_coordinator else list(t.runs.capabilities),
                              "api": t.api, "cli": t.cli, "params": t.params.model_json_schema()}
                             for t in declared], indent=2))
        return
    table = FitTable(Col("type"), Col("runs on", drop=2, wrap=True), Col("command", drop=1),
                     Col("summary", drop=3, wrap=True), title=f"{len(declared)} operation types", wide=wide)
    for t in declared:
        table.add_row(t.name, "coordinator" if t.on_coordinator else " then ".join(t.runs.capabilities),
                      t.cli or "ktrdr ops submit " + t.name, escape(t.summary))
    console.print(table)


@ops_app.command("submit")
def ops_submit(
    op_type: Annotated[str, typer.Argument(metavar="TYPE", help="An operation type (ktrdr ops types).")],
    params: Annotated[str | None, typer.Option(
        "--params", metavar="JSON", help="The params as a JSON object (their schema: ktrdr ops types --json).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="One param (a JSON value or "
                                                   "text; repeatable, over --params).")] = None,
    follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")] = False,
    json: JsonOpt = False,
) -> None:
    """Submit any declared operation type with its params as JSON (the platform checks them).

    Example: ktrdr ops submit dummy --set duration=2 --set steps=4 --follow"""
    try:
        body = jsonlib.loads(params) if params else {}
        if not isinstance(body, dict):
            raise ValueError("--params must be a JSON object")
        for spec in sets or []:
            name, sep, value = spec.partition("=")
            if not sep:
                raise ValueError(f"--set {spec!r} must look like name=value")
            try:
                body[name.strip()] = jsonlib.loads(value)
            except jsonlib.JSONDecodeError:
                body[name.strip()] = value
    except ValueError as exc:
        fail(f"{exc}")
    submit_and_maybe_follow(op_type, body, follow_it=follow_it, json=json)


# --- diagnostics --------------------------------------------------------------------------------

@app.command()
def dummy(
    duration: Annotated[float, typer.Option(min=0, metavar="SECONDS", help="Seconds of simulated work.")] = 5.0,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Progress steps it reports over that "
                                                                "time.")] = 10,
    fail: Annotated[bool, typer.Option("--fail", help="End the op failed.")] = False,
    follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")] = False,
    json: JsonOpt = False,
) -> None:
    """Submit a diagnostic dummy operation: it works for a while, reporting progress, and ends.

    Example: ktrdr dummy --duration 2 --follow"""
    submit_and_maybe_follow(DUMMY.name, {"duration": duration, "steps": steps, "fail": fail},
                            follow_it=follow_it, json=json)


# --- capability commands: one registration block per capability module -------------------------

from ktrdr.cli.backtest import backtest_app  # noqa: E402 - registered after the core commands
from ktrdr.cli.data import data_app  # noqa: E402

app.add_typer(data_app, name="data")

from ktrdr.cli.ib import ib_app  # noqa: E402

app.add_typer(ib_app, name="ib")
app.add_typer(backtest_app, name="backtest")

from ktrdr.cli.strategies import strategies_app  # noqa: E402

app.add_typer(strategies_app, name="strategies")

from ktrdr.cli import train as _train  # noqa: E402

_train.register(app)

from ktrdr.cli import provision as _provision  # noqa: E402 - `provision` and the `context` group

_provision.register(app)


def main() -> None:
    # Newer typer carries its own copy of click: its exceptions, not click's, are what a command
    # raises. Older typer (the project allows >=0.12) uses click itself.
    try:
        from typer._click import exceptions as click
        from typer.exceptions import Abort
    except ImportError:
        from click import exceptions as click  # type: ignore[no-redef]
        from click.exceptions import Abort  # type: ignore[assignment]

    quiet_ssl_eof()
    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError:
        raise SystemExit(EXIT_BAD_INPUT) from None  # the help is printed already
    except click.UsageError as exc:
        # One line on stderr like every other error, naming the command's --help for the details.
        command = exc.ctx.command_path if exc.ctx is not None else "ktrdr"
        print_error(f"{exc.format_message()} (see `{command} --help`)")
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        print_error(exc.format_message())
        raise SystemExit(exc.exit_code) from None
    except Abort:
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
