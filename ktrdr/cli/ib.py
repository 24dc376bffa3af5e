"""``ktrdr ib status`` and ``ktrdr data fetch``: the Interactive Brokers host from the command line.

``ktrdr ib status`` exits 0 only when an IB host is active and connected to its gateway; otherwise it
prints what it knows and exits 3 (the gateway or the platform is unreachable) with one error line on
stderr.

Self-contained (its own client plumbing) because ``ktrdr.cli.app`` imports this module while it
is being built, also when it runs as ``python -m ktrdr.cli.app``.
"""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from typing import Any

import nats.errors
import typer
from rich.markup import escape
from rich.table import Table

from ktrdr.cli.common import JsonOpt, run_client
from ktrdr.cli.render import EXIT_UNREACHABLE, ago, console, fail, to_json
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import KtrdrError, service_error
from subjects import names
from subjects.data import IbStatus
from subjects.models import BadPayload, WorkerLease, decode

ib_app = typer.Typer(help="The Interactive Brokers host: status (connection, pacing, active instance).\n\n"
                          "Example: ktrdr ib status", no_args_is_help=True)

async def ib_request(client: AsyncClient, endpoint: str, payload: bytes = b"") -> bytes:
    """One request to the active IB host's service; its error replies become KtrdrError."""
    assert client.nc is not None
    subject = names.ib_subject(endpoint)
    try:
        msg = await client.request(subject, payload, timeout=client.timeout)
    except nats.errors.NoRespondersError:
        raise KtrdrError(f"no active IB host answers {subject} (is `ktrdr host ib` running?)", 503) from None
    except nats.errors.TimeoutError:
        raise KtrdrError(f"the IB host did not answer {subject} in {client.timeout:g} s", 504) from None
    error = service_error(msg)
    if error is not None:
        raise error
    return msg.data


async def _gather_status(client: AsyncClient) -> dict[str, Any]:
    leases = [w for w in await client.workers() if w.worker_type == "ib"]
    active: IbStatus | None = None
    problem = None
    try:
        active = decode(IbStatus, await ib_request(client, names.IB_STATUS))
    except (KtrdrError, BadPayload) as exc:
        problem = str(exc)
    return {"active": active, "hosts": leases, "problem": problem}


def _status_grid(active: IbStatus) -> Table:
    """The active host as key/value rows: readable at 80 columns, long values fold in their column."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    ib_state = active.ib if active.ib == "connected" else f"[red]{active.ib}[/]"
    p = active.pacing
    rows: list[tuple[str, str]] = [
        ("active instance", f"{active.worker_id} (since {ago(active.active_since)})"),
        ("IB", f"{ib_state} at {active.gateway}, client id {active.client_id}, "
               f"server {active.server_version or '-'}"),
        ("accounts", ", ".join(active.accounts) or "-"),
        ("pacing budget", f"{p.get('remaining', '-')}/{p.get('limit', '-')} requests per {p.get('window_s', '-')} s"
                          f" (resets in {p.get('resets_in_s', 0)} s)"),
        ("pacing penalties", _penalties(p)),
        ("last error", escape(active.last_error or "-")),
    ]
    if active.counters:
        rows.append(("counters", ", ".join(f"{k} {v}" for k, v in sorted(active.counters.items()))))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _penalties(pacing: dict[str, Any]) -> str:
    penalties = pacing.get("penalties") or []
    if not penalties:
        return f"none ({pacing.get('violations', 0)} violations since start)"
    lines = []
    for pen in penalties:
        scope = "all contracts" if pen.get("scope") == "*" else pen.get("scope")
        code = f"IB error {pen['code']}" if pen.get("code") is not None else "pacing"
        try:
            ends = datetime.fromisoformat(str(pen.get("ends_at"))).strftime("%H:%M:%S UTC")
        except ValueError:
            ends = "-"
        lines.append(escape(f"{scope}: {code} ({pen.get('violations', 1)} in a row), met by {pen.get('source')}; "
                            f"ends {ends} (in {pen.get('ends_in_s')} s)"))
    if pacing.get("penalties_not_listed"):
        lines.append(f"and {pacing['penalties_not_listed']} more")
    return "\n".join(lines)


def _hosts_grid(hosts: list[WorkerLease]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)  # worker ids stay whole
    for _ in range(3):
        grid.add_column(overflow="fold")
    for w in hosts:
        role = str(w.status.get("role", w.state.value))
        grid.add_row(w.worker_id, f"[bold green]{role}[/]" if role == "active" else role,
                     f"IB {w.status.get('ib', '-')}", f"heartbeat {ago(w.heartbeat_at)}")
    return grid


@ib_app.command("status")
def status(json: JsonOpt = False) -> None:
    """Connection state, pacing budget and penalties, and which host is the active instance.

    Exits 3 when no IB host is active or the active one has no gateway connection.

    Example: ktrdr ib status --json
    """
    found = run_client(_gather_status)
    active: IbStatus | None = found["active"]
    if json:
        print(jsonlib.dumps({"active": active.model_dump(mode="json") if active else None,
                             "hosts": jsonlib.loads(to_json(found["hosts"])), "problem": found["problem"]},
                            indent=2))
    elif active is not None:
        console.print(_status_grid(active))
    if not json and found["hosts"]:
        console.print(f"\n{len(found['hosts'])} IB host(s)")
        console.print(_hosts_grid(found["hosts"]))
    if active is None:
        fail(found["problem"] or "no active IB host", EXIT_UNREACHABLE)
    if active.ib != "connected":
        fail(f"IB host {active.worker_id} has no gateway connection ({active.ib}"
             f"{': ' + active.last_error if active.last_error else ''})", EXIT_UNREACHABLE)
