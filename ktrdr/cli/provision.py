"""``ktrdr provision`` and ``ktrdr context``: a platform's security files, made where its processes read
them, and the CLI contexts that reach a platform.

``ktrdr provision`` runs what ``ktrdr up`` runs (:func:`ktrdr.security.fleet.provision` and
:func:`ktrdr.security.api_token.load_or_create_token`): a credential per role, the fleet's CA and a
server certificate, the nats-server config that enforces the roles, the status API's tokens, all
kept if present, so running it again changes nothing that works. For processes in other containers
it also writes a self-contained server folder (config and TLS files, ``--server-dir``) and a folder
per role holding that role's credential and the CA only (``--role-dir``). deploy/compose.yaml runs
it as a one-shot service; ``--bundle`` prints what a CLI elsewhere needs, which ``ktrdr context add
NAME --from -`` turns into a context.
"""

from __future__ import annotations

import json as jsonlib
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ktrdr.cli.common import JsonOpt, settings
from ktrdr.cli.render import console, fail
from ktrdr.client.context import Context, list_contexts, write_context

BUNDLE_KIND = "ktrdr-context"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

context_app = typer.Typer(help="Where the CLI connects (`ktrdr context`), and add: a context for another platform."
                               "\n\nExample: ktrdr context --json",
                          invoke_without_command=True, no_args_is_help=False)


@context_app.callback(invoke_without_command=True)
def context_show(ctx: typer.Context, json: JsonOpt = False) -> None:
    """Where the CLI connects, and why (the context `ktrdr up` wrote, KTRDR_NATS_URL or the default).

    Example: ktrdr context --json"""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    known = [str(p) for p in list_contexts(s.home)]
    shown = {"nats_url": s.nats_url, "from": s.nats_url_source, "api_url": s.api_url,
             "nats_creds": str(s.nats_creds) if s.nats_creds else None,
             "nats_ca": str(s.nats_ca) if s.nats_ca else None, "contexts": known}
    if json:
        print(jsonlib.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        if key != "contexts":
            console.print(f"[bold]{key}[/]: {value or '-'}", soft_wrap=True)
    console.print(f"[bold]contexts[/]: {', '.join(known) or 'none (`ktrdr up` writes one)'}", soft_wrap=True)


def _read_bundle(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        bundle = jsonlib.loads(text)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the bundle from {'stdin' if source == '-' else source}: {exc}")
    if not isinstance(bundle, dict) or bundle.get("kind") != BUNDLE_KIND:
        fail(f"{'stdin' if source == '-' else source} is not what `ktrdr provision --bundle` prints")
    return bundle


@context_app.command("add")
def context_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The context's name: use it with `ktrdr --context "
                                                              "NAME` or KTRDR_CONTEXT=NAME (`default` makes it the "
                                                              "default).")],
    nats_url: Annotated[str | None, typer.Option(metavar="URL", help="NATS URL(s), comma separated.")] = None,
    creds: Annotated[Path | None, typer.Option(metavar="FILE", help="The client credential (an nkey seed "
                                                                    "file).")] = None,
    ca: Annotated[Path | None, typer.Option(metavar="FILE", help="The CA of the server's TLS certificate.")] = None,
    api_url: Annotated[str | None, typer.Option(metavar="URL", help="The status API's URL.")] = None,
    api_token_file: Annotated[Path | None, typer.Option(metavar="FILE", help="The status API's bearer token "
                                                                             "file.")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", metavar="FILE", help="A bundle printed by `ktrdr provision --bundle` (a file, or - for stdin): its "
                                       "secrets are stored under KTRDR_HOME/contexts/NAME/ (0600); the options above "
                                       "win over its fields.")] = None,
) -> None:
    """Write a context: how the CLI reaches a platform that `ktrdr up` here did not start.

    Containers (deploy/compose.yaml), another host: `--from -` reads what `ktrdr provision --bundle` prints.

    Example: ktrdr context add lab --nats-url tls://lab:4222 --creds client.nk --ca ca.pem"""
    from ktrdr.security.credentials import CredentialError, NatsCredential, write_private
    from ktrdr.settings import default_home

    if not _NAME.fullmatch(name) or name.endswith(".json"):
        fail(f"context name {name!r}: letters, digits, '.', '_' and '-' only (at most 64), not ending in .json")
    home = default_home()
    if from_ is not None:
        bundle = _read_bundle(from_)
        secrets_dir = home / "contexts" / name
        try:
            if creds is None and bundle.get("nats_creds"):
                creds = secrets_dir / "client.nk"
                write_private(creds, str(bundle["nats_creds"]).strip() + "\n")
            if ca is None and bundle.get("nats_ca"):
                ca = secrets_dir / "ca.pem"
                write_private(ca, str(bundle["nats_ca"]).strip() + "\n")
            if api_token_file is None and bundle.get("api_token"):
                api_token_file = secrets_dir / "api.token"
                write_private(api_token_file, str(bundle["api_token"]).strip() + "\n")
        except OSError as exc:
            fail(f"cannot write under {secrets_dir}: {exc}")
        nats_url = nats_url or bundle.get("nats_url")
        api_url = api_url or bundle.get("api_url")
    if not nats_url:
        fail("no NATS URL: pass --nats-url (or --from a bundle that has one)")
    try:
        if creds is not None:
            creds = creds.expanduser().resolve()
            NatsCredential.load(creds)
    except CredentialError as exc:
        fail(f"{exc}")
    for what, path in (("CA certificate", ca), ("API token file", api_token_file)):
        if path is not None and not path.expanduser().is_file():
            fail(f"the {what} {path} does not exist")
    path = write_context(home, Context(
        name=name, nats_url=nats_url, api_url=api_url, nats_creds=str(creds) if creds else None,
        nats_ca=str(ca.expanduser().resolve()) if ca else None,
        api_token_file=str(api_token_file.expanduser().resolve()) if api_token_file else None),
        by="ktrdr context add")
    console.print(f"context [bold]{name}[/] written to {path}: NATS {nats_url}"
                  + (f", status API {api_url}" if api_url else "")
                  + f". Use it with `ktrdr --context {name} workers` or KTRDR_CONTEXT={name}.", soft_wrap=True)


def _copy_private(source: Path, target: Path) -> None:
    from ktrdr.security.credentials import write_private

    write_private(target, source.read_bytes())


def provision(
    home: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Where the fleet's files live (default KTRDR_HOME).")] = None,
    tls: Annotated[bool, typer.Option("--tls/--no-tls", help="TLS for NATS: a CA and a server certificate.")] = True,
    tls_name: Annotated[list[str] | None, typer.Option(
        "--tls-name", metavar="NAME",
        help="A name or address clients reach nats-server by (repeatable): in its certificate, besides loopback "
             "and this host's name.")] = None,
    server_dir: Annotated[Path | None, typer.Option(
        metavar="DIR",
        help="Also write a self-contained nats-server.conf there, with copies of the TLS files it names (for a "
             "server in another container: `nats-server -c DIR/nats-server.conf`).")] = None,
    monitor: Annotated[str | None, typer.Option(
        metavar="ADDRESS",
        help="HOST:PORT of nats-server's monitoring endpoint (no auth: keep it on 127.0.0.1; a healthcheck "
             "reads /healthz there).")] = None,
    role_dir: Annotated[list[str] | None, typer.Option(
        "--role-dir", metavar="ROLE=DIR",
        help="Copy that role's credential (DIR/ROLE.nk) and the CA (DIR/ca.pem) there, and nothing else "
             "(repeatable).")] = None,
    host_pool: Annotated[list[str] | None, typer.Option(
        "--host-pool", metavar="ROLE=COUNT@DIR",
        help="COUNT host keys of ROLE (worker or ib) in DIR, and the CA beside them: a worker started with "
             "KTRDR_NATS_CREDS_POOL=DIR holds one no other process holds, so each scaled container is a host "
             "of its own (repeatable).")] = None,
    nats_url: Annotated[str | None, typer.Option(
        metavar="URL",
        help="The URL clients reach NATS by (for --context, --bundle and what `ktrdr fleet invite` hands "
             "out).")] = None,
    api_url: Annotated[str | None, typer.Option(
        metavar="URL", help="The URL clients reach the status API by.")] = None,
    context: Annotated[str | None, typer.Option(
        "--context", metavar="NAME",
        help="Also write this CLI context in HOME (the client credential, the CA, the token).")] = None,
    bundle: Annotated[bool, typer.Option(
        "--bundle", help="Print a JSON bundle for `ktrdr context add NAME --from -` on stdout: the URLs, the client "
                         "credential, the CA and the API token. It holds secrets.")] = False,
) -> None:
    """Make a platform's credentials, certificates, server config and API tokens, as `ktrdr up` does.

    Kept if present: running it again changes nothing that works.

    --server-dir and --role-dir place them for other containers (deploy/compose.yaml's `provision` service).

    Example: ktrdr provision --home /srv/ktrdr --tls-name nats --server-dir /srv/nats --role-dir worker=/srv/w"""
    from ktrdr.security.api_token import load_or_create_token
    from ktrdr.security.credentials import write_private
    from ktrdr.security.fleet import host_pool as make_pool
    from ktrdr.security.fleet import provision as make_fleet
    from ktrdr.security.fleet import write_fleet_file
    from ktrdr.security.hosts import load_hosts
    from ktrdr.security.serverconf import render
    from ktrdr.security.tls import TlsFiles
    from ktrdr.settings import default_home
    from subjects import roles

    home = (home or default_home()).expanduser()
    copies: list[tuple[str, Path]] = []
    for spec in role_dir or []:
        role, sep, dir_arg = spec.partition("=")
        if not sep or not dir_arg or role not in roles.ROLES:
            fail(f"--role-dir {spec!r}: ROLE=DIR with ROLE one of {', '.join(roles.ROLES)}")
        copies.append((role, Path(dir_arg)))
    pools: list[tuple[str, Path, int]] = []
    for spec in host_pool or []:
        role, sep, rest = spec.partition("=")
        count_arg, at, dir_arg = rest.partition("@")
        if not sep or not at or not dir_arg or role not in (roles.WORKER, roles.IB) or not count_arg.isdigit():
            fail(f"--host-pool {spec!r}: ROLE=COUNT@DIR with ROLE worker or ib, e.g. worker=32@/etc/ktrdr/worker")
        pools.append((role, Path(dir_arg), int(count_arg)))
    # With --bundle, stdout is the bundle: what is said goes to stderr.
    out = Console(stderr=True) if bundle else console
    try:
        for role, folder, count in pools:
            # Before the server's config is written: it lists the pool's hosts.
            made = make_pool(home, role=role, folder=folder, count=count)
            out.print(f"{role} host pool {folder}: {len(made)} key(s)"
                      + (f", {made[0]} to {made[-1]}" if made else ""), soft_wrap=True)
        fleet = make_fleet(home, tls=tls, tls_names=list(tls_name or []), monitor=monitor)
        if fleet.tls is not None:
            for _, folder, _ in pools:
                _copy_private(fleet.tls.ca, folder / "ca.pem")
        token_file = fleet.auth_dir / "api.token"
        token = load_or_create_token(token_file)
        load_or_create_token(fleet.auth_dir / "api-viewer.token")
        out.print(f"fleet in {home}: a credential per role ({', '.join(fleet.credentials)}), nats-server config "
                  f"{fleet.config}" + (f", CA {fleet.tls.ca}" if fleet.tls else ", no TLS")
                  + f", API token {token_file}", soft_wrap=True)
        if server_dir is not None:
            files = None
            if fleet.tls is not None:
                files = TlsFiles(ca=server_dir / "ca.pem", cert=server_dir / "server.pem",
                                 key=server_dir / "server-key.pem")
                for source, target in ((fleet.tls.ca, files.ca), (fleet.tls.cert, files.cert),
                                       (fleet.tls.key, files.key)):
                    _copy_private(source, target)
            conf = server_dir / "nats-server.conf"
            write_private(conf, render(credentials=fleet.credentials, hosts=load_hosts(fleet.auth_dir).values(),
                                       tls=files, monitor=monitor, server_name="ktrdr"))
            out.print(f"nats-server config {conf}" + (" with its TLS files beside it" if files else ""), soft_wrap=True)
        for role, folder in copies:
            _copy_private(fleet.credential_file(role), folder / f"{role}.nk")
            if fleet.tls is not None:
                _copy_private(fleet.tls.ca, folder / "ca.pem")
            out.print(f"{role}: {folder / f'{role}.nk'}" + (f" and {folder / 'ca.pem'}" if fleet.tls else ""),
                      soft_wrap=True)
        if nats_url:
            # What `ktrdr fleet invite` hands a joining host: this URL, and the CA when there is TLS.
            urls = [u.strip() for u in nats_url.split(",") if u.strip()]
            write_fleet_file(home, urls=urls, tls=fleet.tls is not None)
        client_creds = fleet.credential_file(roles.CLIENT)
        if context is not None:
            if not nats_url:
                fail("--context needs --nats-url: the URL this host's CLI reaches NATS by")
            written = write_context(home, Context(
                name=context, nats_url=nats_url, api_url=api_url, nats_creds=str(client_creds),
                nats_ca=str(fleet.tls.ca) if fleet.tls else None, api_token_file=str(token_file)),
                by="ktrdr provision")
            out.print(f"context {context}: {written}", soft_wrap=True)
        if bundle:
            print(jsonlib.dumps({"kind": BUNDLE_KIND, "nats_url": nats_url, "api_url": api_url,
                                 "nats_creds": client_creds.read_text(),
                                 "nats_ca": fleet.tls.ca.read_text() if fleet.tls else None, "api_token": token},
                                indent=2))
    except (OSError, ValueError, RuntimeError) as exc:
        fail(f"{exc}")


def register(app: typer.Typer) -> None:
    """Add ``provision`` and the ``context`` group (``ktrdr context`` alone shows the current one)."""
    app.command()(provision)
    app.add_typer(context_app, name="context")

