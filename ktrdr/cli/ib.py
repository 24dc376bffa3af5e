"""``ktrdr ib status`` and ``ktrdr data fetch``: the Interactive Brokers host from the command line.

Self-contained (its own client plumbing) because ``ktrdr.cli.app`` imports this module while it
is being built, also when it runs as ``python -m ktrdr.cli.app``.
"""

from __future__ import annotations

import json as jsonlib
from typing import Annotated, Any

import nats.errors
import typer
from pydantic import ValidationError
from rich.table import Table

from ktrdr.cli.client import KtrdrClient, KtrdrError, service_error, to_json
from ktrdr.cli.common import JsonOpt, run_client, submit_and_maybe_follow
from ktrdr.cli.render import ago, console
from ktrdr.optypes.data_load import DATA_LOAD
from subjects import names
from subjects.data import DataLoadParams, IbStatus
from subjects.models import BadPayload, WorkerLease, decode

ib_app = typer.Typer(help="The Interactive Brokers host: connection, pacing, active instance.",
                     no_args_is_help=True)

async def ib_request(client: KtrdrClient, endpoint: str, payload: bytes = b"") -> bytes:
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


async def _gather_status(client: KtrdrClient) -> dict[str, Any]:
    leases = [w for w in await client.workers() if w.worker_type == "ib"]
    active: IbStatus | None = None
    problem = None
    try:
        active = decode(IbStatus, await ib_request(client, names.IB_STATUS))
    except (KtrdrError, BadPayload) as exc:
        problem = str(exc)
    return {"active": active, "hosts": leases, "problem": problem}


def _hosts_table(hosts: list[WorkerLease]) -> Table:
    table = Table(title=f"{len(hosts)} IB host(s)")
    for col in ("id", "role", "IB", "gateway", "client id", "accounts", "pacing left", "last error", "heartbeat"):
        table.add_column(col)
    for w in hosts:
        st = w.status
        pacing = st.get("pacing") or {}
        left = f"{pacing.get('remaining', '-')}/{pacing.get('limit', '-')}" if pacing else "-"
        role = str(st.get("role", w.state.value))
        table.add_row(w.worker_id, f"[bold green]{role}[/]" if role == "active" else role, str(st.get("ib", "-")),
                      str(st.get("gateway", "-")), str(st.get("client_id", "-")),
                      ",".join(st.get("accounts") or []) or "-", left, str(st.get("last_error") or "-"),
                      ago(w.heartbeat_at))
    return table


@ib_app.command("status")
def status(json: JsonOpt = False) -> None:
    """Connection state, pacing budget left and which host is the active instance."""
    found = run_client(_gather_status)
    active: IbStatus | None = found["active"]
    if json:
        print(jsonlib.dumps({"active": active.model_dump(mode="json") if active else None,
                             "hosts": jsonlib.loads(to_json(found["hosts"])), "problem": found["problem"]},
                            indent=2))
    else:
        console.print(_hosts_table(found["hosts"]))
        if active is not None:
            p = active.pacing
            console.print(f"active instance: [bold]{active.worker_id}[/] — IB {active.ib} at {active.gateway}"
                          f" (server {active.server_version or '-'}); pacing budget "
                          f"{p.get('remaining')}/{p.get('limit')} per {p.get('window_s')} s")
        else:
            console.print(f"[yellow]no active IB host[/]: {found['problem']}")
    if active is None:
        raise typer.Exit(1)


def fetch(
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. AAPL or EURUSD.")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t", help="1m 5m 15m 30m 1h 4h 1d 1w.")] = "1h",
    start: Annotated[str | None, typer.Option(help="First bar (ISO date/time, UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="End, exclusive (ISO date/time, UTC; default now).")] = None,
    mode: Annotated[str, typer.Option(help="tail: after the last stored bar; backfill: before the first; "
                                           "full: the whole range.")] = "tail",
    follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")] = False,
    json: JsonOpt = False,
) -> None:
    """Download bars from Interactive Brokers into the store and the shared data bucket."""
    try:
        params = DataLoadParams.model_validate(
            {"symbol": symbol, "timeframe": timeframe, "start": start, "end": end, "mode": mode})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        console.print(f"[red]error:[/] {where}: {first['msg']}")
        raise typer.Exit(2) from None

    submit_and_maybe_follow(DATA_LOAD.name, params.model_dump(mode="json", exclude_none=True),
                            follow_it=follow_it, json=json)
