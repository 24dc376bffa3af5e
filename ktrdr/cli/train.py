"""``ktrdr train`` and ``ktrdr models``: train a neuro-fuzzy strategy's model, browse the registry.

Registered from the capability block of :mod:`ktrdr.cli.app` through :func:`register`, which
hands in the app's client runner (so this module never imports the app module).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from ktrdr.cli.common import JsonOpt, checked, run_client, submit_and_maybe_follow
from ktrdr.cli.render import console, to_json
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import KtrdrError
from ktrdr.models import ModelVersion, list_models, parse_model_ref, show_model
from ktrdr.models.registry import ModelNotFoundError
from ktrdr.optypes.training import TRAINING


def training_params(strategy: str, *, symbol: str | None, timeframes: list[str] | None, start: datetime | None,
                    end: datetime | None, model: str | None, seed: int | None, epochs: int | None,
                    checkpoint_every: int | None) -> dict[str, Any]:
    """Checked params with the strategy's defaults filled in; errors name the option at fault."""
    params = checked(TRAINING.name, {"strategy": strategy, "symbols": [symbol] if symbol else None,
                                     "timeframes": timeframes or None, "start": start, "end": end,
                                     "model_name": model, "seed": seed, "epochs": epochs,
                                     "checkpoint_every": checkpoint_every})
    return params.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _metric(v: ModelVersion, key: str) -> str:
    value = (v.metadata.get("metrics") or {}).get(key)
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def models_table(versions: list[ModelVersion]) -> Table:
    table = Table(title=f"{len(versions)} model version(s)")
    for col in ("model", "created", "strategy", "symbol", "timeframes", "epochs", "device", "test acc", "op"):
        table.add_column(col)
    for v in versions:
        m = v.metadata
        table.add_row(v.ref, v.created_at[:19], str(m.get("strategy", "-")), str(m.get("symbol", "-")),
                      ", ".join(m.get("timeframes") or []) or "-", _metric(v, "epochs_run"), _metric(v, "device"),
                      _metric(v, "test_accuracy"), str(m.get("op_id", "-")))
    return table


def model_details(v: ModelVersion) -> Table:
    table = Table(show_header=False, title=f"model {v.ref}")
    table.add_column(style="bold")
    table.add_column()
    m = v.metadata
    rows = [("created", v.created_at), ("size", f"{v.size} bytes"), ("digest", v.digest),
            ("strategy", str(m.get("strategy", "-"))), ("symbol", str(m.get("symbol", "-"))),
            ("timeframes", ", ".join(m.get("timeframes") or []) or "-"),
            ("bars", f"{m.get('start', '-')} .. {m.get('end', '-')}"),
            ("operation", f"{m.get('op_id', '-')} (attempt {m.get('attempt', '-')} on {m.get('worker_id', '-')})")]
    for key in ("device", "epochs_run", "stopped_early", "resumed_from_epoch", "best_epoch", "final_train_loss",
                "final_val_loss", "test_accuracy", "test_edge"):
        rows.append((key, _metric(v, key)))
    for k, value in rows:
        table.add_row(k, value)
    return table


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``models`` group to ``app``."""
    models_app = typer.Typer(help="The model registry: trained, versioned model bundles.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @app.command()
    def train(
        strategy: Annotated[str, typer.Argument(help="Packaged name, name in the strategies dir, or a YAML file.")],
        symbol: Annotated[str | None, typer.Option(help="Symbol (default: the strategy's).")] = None,
        timeframe: Annotated[list[str] | None, typer.Option(help="Timeframe (repeatable; default: the strategy's).")]
        = None,
        start: Annotated[datetime | None, typer.Option(help="First bar (UTC).")] = None,
        end: Annotated[datetime | None, typer.Option(help="Last bar (UTC).")] = None,
        model: Annotated[str | None, typer.Option(help="Registry name (default: the strategy's name).")] = None,
        seed: Annotated[int | None, typer.Option(min=0)] = None,
        epochs: Annotated[int | None, typer.Option(min=1, help="Override the strategy's epochs.")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Epochs between checkpoints.")] = None,
        follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live (epoch, batch, losses, "
                                                "device); Ctrl-C cancels.")] = False,
        json: JsonOpt = False,
    ) -> None:
        """Train a neuro-fuzzy strategy's model on the GPU host if there is one, else a CPU worker."""
        params = training_params(strategy, symbol=symbol, timeframes=timeframe, start=start, end=end, model=model,
                                 seed=seed, epochs=epochs, checkpoint_every=checkpoint_every)
        submit_and_maybe_follow(TRAINING.name, params, follow_it=follow_it, json=json)

    @models_app.command("list")
    def models_list(json: JsonOpt = False) -> None:
        """Every stored model version."""
        found = run_client(lambda c: list_models(_js(c)))
        if json:
            print(to_json([v.to_dict() for v in found]))
        else:
            console.print(models_table(found))

    @models_app.command("show")
    def models_show(ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")], json: JsonOpt = False) -> None:
        """One model version (the latest without @VERSION)."""
        try:
            name, version = parse_model_ref(ref)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

        async def work(c: AsyncClient) -> ModelVersion:
            try:
                return await show_model(_js(c), name, version)
            except ModelNotFoundError as exc:
                raise KtrdrError(str(exc), 404) from None

        found = run_client(work)
        if json:
            print(to_json(found.to_dict()))
        else:
            console.print(model_details(found))


def _js(client: AsyncClient) -> Any:
    assert client.nc is not None
    return client.nc.jetstream()
