"""``ktrdr train`` and ``ktrdr models``: train a neuro-fuzzy strategy's model, browse the registry.

Registered from the capability block of :mod:`ktrdr.cli.app` through :func:`register`, which
hands in the app's client runner (so this module never imports the app module).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from ktrdr.cli.common import TIMEFRAME_HELP, JsonOpt, WideOpt, checked, run_client, submit_and_maybe_follow
from ktrdr.cli.render import Col, FitTable, console, timestamp, to_json
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


def models_table(versions: list[ModelVersion], *, wide: bool = False) -> FitTable:
    # Model refs, symbols and op ids are what a user types next: whole; the rest gives way.
    table = FitTable(Col("model"), Col("created", drop=3), Col("strategy", drop=4), Col("symbol", drop=2),
                     Col("timeframes", drop=5, wrap=True), Col("epochs", drop=6, justify="right"),
                     Col("device", drop=7), Col("test acc", drop=1, justify="right"), Col("op", drop=8),
                     title=f"{len(versions)} model version(s), times UTC", wide=wide)
    for v in versions:
        m = v.metadata
        table.add_row(v.ref, timestamp(v.created_at), str(m.get("strategy", "-")), str(m.get("symbol", "-")),
                      ", ".join(m.get("timeframes") or []) or "-", _metric(v, "epochs_run"), _metric(v, "device"),
                      _metric(v, "test_accuracy"), str(m.get("op_id", "-")))
    return table


def model_details(v: ModelVersion) -> FitTable:
    table = FitTable(Col("", style="bold"), Col("", wrap=True), show_header=False, title=f"model {v.ref}, times UTC")
    m = v.metadata
    rows = [("created", timestamp(v.created_at)), ("size", f"{v.size:,} bytes"), ("digest", v.digest),
            ("strategy", str(m.get("strategy", "-"))), ("symbol", str(m.get("symbol", "-"))),
            ("timeframes", ", ".join(m.get("timeframes") or []) or "-"),
            ("bars", f"{timestamp(m.get('start'))} .. {timestamp(m.get('end'))}"),
            ("operation", f"{m.get('op_id', '-')} (attempt {m.get('attempt', '-')} on {m.get('worker_id', '-')})")]
    for key in ("device", "epochs_run", "stopped_early", "resumed_from_epoch", "best_epoch", "final_train_loss",
                "final_val_loss", "test_accuracy", "test_edge"):
        rows.append((key, _metric(v, key)))
    for k, value in rows:
        table.add_row(k, escape(value))
    return table


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``models`` group to ``app``."""
    models_app = typer.Typer(help="The model registry: list and show trained, versioned model bundles.\n\n"
                                  "Example: ktrdr models show planted@1", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @app.command()
    def train(
        strategy: Annotated[str, typer.Argument(metavar="STRATEGY", help="A neuro-fuzzy strategy: a packaged name, "
                                                "a name in the strategies directory, or a YAML file.")],
        symbol: Annotated[str | None, typer.Option(metavar="SYMBOL", help="Whose stored bars (default: the "
                                                                          "strategy's).")] = None,
        timeframe: Annotated[list[str] | None, typer.Option(
            metavar="TIMEFRAME", help=f"{TIMEFRAME_HELP} Repeatable; default: the strategy's.")] = None,
        start: Annotated[datetime | None, typer.Option(metavar="DATE", help="First bar (UTC): a date or date and "
                                                                            "time, e.g. 2020-01-01.")] = None,
        end: Annotated[datetime | None, typer.Option(metavar="DATE", help="Last bar (UTC), as --start.")] = None,
        model: Annotated[str | None, typer.Option(metavar="NAME", help="Registry name (default: the strategy's "
                                                                       "name); each training adds a version.")
                         ] = None,
        seed: Annotated[int | None, typer.Option(min=0, metavar="N", help="Random seed (default: the strategy's): "
                                                                          "the same seed, data and options train "
                                                                          "the same model.")] = None,
        epochs: Annotated[int | None, typer.Option(min=1, metavar="N", help="Epochs to train (default: the "
                                                                            "strategy's).")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(min=1, metavar="N", help="Epochs between checkpoints "
                                                                                      "(a retried training resumes "
                                                                                      "from the last).")] = None,
        follow_it: Annotated[bool, typer.Option("--follow", "-f", help="Follow live (epoch, batch, losses, "
                                                "device); Ctrl-C cancels.")] = False,
        json: JsonOpt = False,
    ) -> None:
        """Train a neuro-fuzzy strategy's model on the GPU host if there is one, else a CPU worker.

        Example: ktrdr train neuro_mean_reversion --symbol SYN --epochs 5 --follow"""
        params = training_params(strategy, symbol=symbol, timeframes=timeframe, start=start, end=end, model=model,
                                 seed=seed, epochs=epochs, checkpoint_every=checkpoint_every)
        submit_and_maybe_follow(TRAINING.name, params, follow_it=follow_it, json=json)

    @models_app.command("list")
    def models_list(json: JsonOpt = False, wide: WideOpt = False) -> None:
        """Every stored model version, with what it was trained on and its test accuracy.

        Example: ktrdr models list"""
        found = run_client(lambda c: list_models(_js(c)))
        if json:
            print(to_json([v.to_dict() for v in found]))
        else:
            console.print(models_table(found, wide=wide))

    @models_app.command("show")
    def models_show(ref: Annotated[str, typer.Argument(metavar="MODEL", help="A model as name (its latest "
                                                       "version) or name@version.")],
                    json: JsonOpt = False) -> None:
        """One model version: what it was trained on, by which operation, and how it did.

        Example: ktrdr models show planted@1"""
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
