"""``training``: a neuro-fuzzy strategy's model, trained on a GPU host when one is up, else on a CPU."""

from __future__ import annotations

from typing import Any

from ktrdr.models.training_plan import TrainingRequestError, plan_training
from ktrdr.optypes.defn import OpType, Rejected, declare, on
from ktrdr.optypes.headlines import number
from ktrdr.optypes.lookups import Lookups, stored_bars
from subjects import names
from subjects.results import TrainingResult
from subjects.training import TrainingParams


def admit_training(params: TrainingParams) -> TrainingParams:
    """The strategy must load and be neuro-fuzzy; the symbol, timeframes and model name it implies
    are written into the params, so the record says what was trained."""
    try:
        plan = plan_training(params)
    except TrainingRequestError as exc:
        raise Rejected(exc.field, exc.message) from None
    return params.model_copy(update={"symbols": [plan.symbol], "timeframes": plan.timeframes,
                                     "model_name": plan.model_name})


async def verify_training(params: TrainingParams, lookups: Lookups) -> None:
    """The bars of every timeframe it trains on are stored (``admit`` named them), between its start and end."""
    if params.symbols and params.timeframes:
        await stored_bars(lookups, symbol=params.symbols[0], timeframes=params.timeframes, start=params.start,
                          end=params.end, symbol_field="symbols", timeframe_field="timeframes")


def headline(result: dict[str, Any]) -> str:
    """``model planted@3: test accuracy 0.62 after 5 epochs on cpu``."""
    metrics = result.get("metrics") or {}
    return (f"model {result['model']}: test accuracy {number(metrics.get('test_accuracy'), '.3f')} after "
            f"{number(metrics.get('epochs_run'), 'd')} epochs on {metrics.get('device') or '-'}")


TRAINING = declare(OpType(
    name="training", params=TrainingParams, result=TrainingResult,
    runs=on(names.CAP_TRAINING_GPU, names.CAP_TRAINING_CPU),
    summary="train a neuro-fuzzy model (GPU first, CPU after a timeout) into the model registry",
    admit=admit_training, verify=verify_training, api="/api/v1/trainings", cli="ktrdr train", headline=headline))
