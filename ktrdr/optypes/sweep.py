"""``sweep``: one backtest per combination of a parameter grid, ranked by a metric.

Run by the coordinator's parent runner: a single stage of ``backtesting`` children (keys are the
combination's index), reduced to a ranking once every child has ended. The top entries go in the
parent's result; the whole ranking (every combination, its parameters and metrics, failures) in the
``results`` store under the parent's id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.backtest.sweep import combinations, rank
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.defn import ON_COORDINATOR, OpType, Rejected, declare
from ktrdr.optypes.parent import Child, ChildState, Decision, ParentEnv, Ready, Reduced, Stage
from subjects.models import OpStatus
from subjects.params import BacktestParams, SweepParams
from subjects.results import SweepResult

RANKING_FORMAT = "ktrdr.sweep.ranking/1"
# Metrics copied into each entry of the parent's (small) result beside the ranking metric.
SUMMARY_METRICS = ("total_return_pct", "sharpe_ratio", "max_drawdown_pct", "trades", "win_rate")


def admit_sweep(params: SweepParams) -> SweepParams:
    """The strategy must load with the shared overrides and every combination of the grid."""
    try:
        check_strategy(params.strategy, params.parameters, params.grid)
    except RequestProblem as exc:
        raise Rejected(exc.field, exc.message) from None
    return params


class SweepPlan:
    unit = "backtests"

    async def prepare(self, params: SweepParams, env: ParentEnv) -> dict[str, Any]:
        return {}

    def plan(self, params: SweepParams, prepared: Mapping[str, Any],
             children: Mapping[str, ChildState]) -> Decision:
        combos = combinations(params.grid)
        if len(children) >= len(combos) and all(c.ended for c in children.values()):
            return Ready()
        return Stage(name=self.unit, total=len(combos), children=[
            Child(key=str(i), type=BACKTEST, params=BacktestParams.model_validate(params.child_params(combo)))
            for i, combo in enumerate(combos)])

    async def reduce(self, params: SweepParams, prepared: Mapping[str, Any],
                     children: Mapping[str, ChildState], env: ParentEnv) -> Reduced:
        return reduce_sweep(params, sorted(children.values(), key=lambda c: int(c.key)), parent_id=env.op_id)


def reduce_sweep(params: SweepParams, children: list[ChildState], *, parent_id: str) -> Reduced:
    """Rank the completed children by ``params.metric`` (failures listed apart)."""
    grid_names = list(params.grid)

    def entry(c: ChildState) -> dict[str, Any]:
        overrides = c.params.get("parameters", {})
        return {"op_id": c.op_id, "parameters": {k: overrides.get(k) for k in grid_names},
                "metrics": (c.result or {}).get("metrics", {})}

    completed = [entry(c) for c in children if c.completed]
    ranked = [{"rank": i + 1, **r} for i, r in
              enumerate(rank(completed, params.metric, descending=params.ranks_descending))]
    failed = [{"op_id": c.op_id, "parameters": entry(c)["parameters"], "error": c.error}
              for c in children if c.status is OpStatus.FAILED]
    cancelled = sum(c.status is OpStatus.CANCELLED for c in children)
    doc = {"format": RANKING_FORMAT, "sweep": parent_id,
           "metric": params.metric, "descending": params.ranks_descending, "grid": params.grid,
           "combinations": len(children), "completed": len(completed), "failed": failed,
           "cancelled": cancelled, "ranking": ranked}
    top = [{"rank": r["rank"], "op_id": r["op_id"], "parameters": r["parameters"],
            params.metric: r["metrics"].get(params.metric),
            **{k: r["metrics"].get(k) for k in SUMMARY_METRICS if k != params.metric}}
           for r in ranked[: params.top]]
    summary = SweepResult.model_validate({
        "metric": params.metric, "descending": params.ranks_descending, "combinations": len(children),
        "completed": len(completed), "failed": len(failed), "cancelled": cancelled,
        "best": top[0] if top else None, "top": top})
    error = None
    if not completed:
        first = failed[0]["error"] if failed else "cancelled"
        error = f"none of the {len(children)} backtests completed; first error: {first}"
    return Reduced(result=summary, error=error, description=f"sweep ranking by {params.metric}",
                   document=json.dumps(doc, separators=(",", ":")).encode())


SWEEP = declare(OpType(
    name="sweep", params=SweepParams, result=SweepResult, runs=ON_COORDINATOR, parent=SweepPlan(),
    summary="a backtest per combination of a parameter grid, ranked by a metric",
    admit=admit_sweep, api="/api/v1/backtests/sweeps", cli="ktrdr backtest sweep"))
