"""The ``ktrdr`` command: platform processes, operations, workers and (later) domain commands."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ktrdr.cli.client import to_json
from ktrdr.cli.common import JsonOpt, exit_for, run_client, settings, submit_and_maybe_follow
from ktrdr.cli.follow import follow
from ktrdr.cli.render import console, op_details, ops_table, workers_table
from ktrdr.logs import setup_logging
from subjects.models import OpStatus

app = typer.Typer(help="ktrdr: trading-strategy research on a NATS JetStream worker fleet.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
ops_app = typer.Typer(help="Operations: list, show, follow, cancel.", no_args_is_help=True)
worker_app = typer.Typer(help="Run a worker process.", no_args_is_help=True)
host_app = typer.Typer(help="Run a host process (GPU, Interactive Brokers).", no_args_is_help=True)
app.add_typer(ops_app, name="ops")
app.add_typer(worker_app, name="worker")
app.add_typer(host_app, name="host")

# --- platform processes -------------------------------------------------------------------------

@app.command()
def up(
    nats_port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
    monitor_port: Annotated[int, typer.Option(help="Monitoring port of the embedded nats-server.")] = 8222,
    api_port: Annotated[int, typer.Option(help="Port of the status API.")] = 8000,
    backtest_workers: Annotated[int, typer.Option(min=0)] = 1,
    training_workers: Annotated[int, typer.Option(min=0)] = 1,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="Force or skip the GPU host.")] = None,
) -> None:
    """Start everything: embedded nats-server (unless KTRDR_NATS_URL is set), coordinator and workers."""
    from ktrdr.cli.up import run_up

    setup_logging("WARNING")
    code = run_up(settings=settings(), explicit_nats="KTRDR_NATS_URL" in os.environ, nats_port=nats_port,
                  monitor_port=monitor_port, api_port=api_port, backtest_workers=backtest_workers,
                  training_workers=training_workers, gpu=gpu)
    raise typer.Exit(code)


@app.command()
def coordinator() -> None:
    """Run the coordinator (registry, dispatcher, status API on KTRDR_API_PORT)."""
    from coordinator.__main__ import main

    main()


def _run_worker(module: str) -> None:
    import importlib

    from ktrdr.runtime.entry import run_worker

    run_worker(importlib.import_module(f"{module}.app").build_worker)


@worker_app.command("backtest")
def worker_backtest() -> None:
    """Run a backtest worker (CPU; start as many as you like)."""
    _run_worker("worker_backtest")


@worker_app.command("training")
def worker_training() -> None:
    """Run a CPU training worker."""
    _run_worker("worker_training")


@host_app.command("gpu")
def host_gpu() -> None:
    """Run the GPU host (refuses to start without CUDA or MPS)."""
    from host_gpu.device import NoGpuError

    try:
        _run_worker("host_gpu")
    except NoGpuError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@host_app.command("ib")
def host_ib() -> None:
    """Run the Interactive Brokers host."""
    _run_worker("host_ib")


# --- reading ------------------------------------------------------------------------------------

@app.command()
def workers(
    type: Annotated[str | None, typer.Option("--type", help="Only workers of this type.")] = None,
    json: JsonOpt = False,
) -> None:
    """List the workers that hold a lease."""
    found = run_client(lambda c: c.workers())
    if type:
        found = [w for w in found if w.worker_type == type]
    if json:
        print(to_json(found))
    else:
        console.print(workers_table(found))


@ops_app.command("list")
def ops_list(
    status: Annotated[list[OpStatus] | None, typer.Option(help="Filter by status (repeatable).")] = None,
    type: Annotated[str | None, typer.Option("--type")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only pending and running.")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    json: JsonOpt = False,
) -> None:
    """List operations, newest first."""
    found = run_client(lambda c: c.list(status=status, type=type, active_only=active, limit=limit, offset=offset))
    if json:
        print(to_json(found))
    else:
        console.print(ops_table(found.operations, found.total))


@ops_app.command("show")
def ops_show(op_id: str, json: JsonOpt = False) -> None:
    """Show one operation."""
    op = run_client(lambda c: c.get(op_id))
    if json:
        print(to_json(op))
    else:
        console.print(op_details(op))


@ops_app.command("follow")
def ops_follow(op_id: str, json: JsonOpt = False) -> None:
    """Follow an operation live; Ctrl-C cancels it."""
    op = run_client(lambda c: follow(c, op_id, quiet=json))
    if json:
        print(to_json(op))
    exit_for(op)


@ops_app.command("cancel")
def ops_cancel(op_id: str, reason: Annotated[str, typer.Option()] = "cancelled by user",
               json: JsonOpt = False) -> None:
    """Cancel an operation (queued ones never start; running ones stop at their next check)."""
    reply = run_client(lambda c: c.cancel(op_id, reason))
    if json:
        print(to_json(reply))
    else:
        style = "green" if reply.accepted else "yellow"
        console.print(f"[{style}]{'accepted' if reply.accepted else 'not accepted'}[/]: {reply.message}"
                      + (f" (status {reply.status.value})" if reply.status else ""))
    if not reply.accepted:
        raise typer.Exit(1)


# --- diagnostics --------------------------------------------------------------------------------

@app.command()
def dummy(
    duration: Annotated[float, typer.Option(min=0, help="Seconds of simulated work.")] = 5.0,
    steps: Annotated[int, typer.Option(min=1)] = 10,
    fail: Annotated[bool, typer.Option("--fail", help="End the op failed.")] = False,
    follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live; Ctrl-C cancels.")] = False,
    json: JsonOpt = False,
) -> None:
    """Submit a diagnostic dummy operation."""
    submit_and_maybe_follow("dummy", {"duration": duration, "steps": steps, "fail": fail},
                            follow_it=follow_it, json=json)


# --- capability commands: one registration block per capability module -------------------------

from ktrdr.cli.backtest import backtest_app  # noqa: E402 - registered after the core commands
from ktrdr.cli.data import data_app  # noqa: E402

app.add_typer(data_app, name="data")

from ktrdr.cli.ib import fetch as ib_fetch  # noqa: E402
from ktrdr.cli.ib import ib_app  # noqa: E402

app.add_typer(ib_app, name="ib")
data_app.command("fetch")(ib_fetch)
app.add_typer(backtest_app, name="backtest")

from ktrdr.cli import train as _train  # noqa: E402

_train.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
