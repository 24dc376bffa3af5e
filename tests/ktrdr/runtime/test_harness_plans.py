"""A parent type's plan runs in memory (``PlanEnvironment``): its stages in order, its children through
their handlers on shared in-memory stores, its reduction; the answers are the ones its children give
alone, and a plan that gives up says why."""

from __future__ import annotations

import json
from pathlib import Path

from ktrdr.backtest.sweep import combinations
from ktrdr.data import synth
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.sweep import SWEEP
from ktrdr.optypes.walkforward import WALKFORWARD, WalkForwardParams, admit_walkforward
from ktrdr.runtime.harness import HandlerEnvironment
from ktrdr.runtime.plan_harness import PlanEnvironment
from ktrdr.runtime.stalls import StallWatch
from subjects.models import OpStatus
from subjects.params import BacktestParams, SweepParams
from worker_backtest.handler import BacktestHandler

BARS = synth("SYNTH", "1h", "2020-01-01", 2000, 7)
GRID = {"fast": [5, 10], "slow": [30, 40]}
BASE = {"strategy": "sma_crossover", "symbol": "SYNTH", "timeframe": "1h"}


def environment(tmp_path: Path) -> PlanEnvironment:
    handler = BacktestHandler(tmp_path / "store")
    env = PlanEnvironment(handlers={BACKTEST: handler, BACKTEST_BLOCK: handler.run_block},
                          stalls=StallWatch(refuse=True))
    env.datasets.put_bars("SYNTH", "1h", BARS)
    return env


async def test_a_sweep_runs_its_blocks_then_its_best_in_full_and_ranks_as_lone_backtests_would(
        tmp_path: Path) -> None:
    env = environment(tmp_path)
    outcome = await env.run(SWEEP, SweepParams(**BASE, grid=GRID, block_size=2, metric="total_return_pct"),
                            op_id="sw")
    assert outcome.error is None and env.stages["sw"] == ["blocks", "full results"]
    assert sorted(env.children["sw"]) == ["b0", "b1", "full0"]
    assert env.records.ops["sw"].status is OpStatus.COMPLETED
    # Each block was absorbed as it completed (its columns parsed), as the coordinator's runner does.
    assert [env.absorbed[f"sw-{key}"].variants for key in ("b0", "b1")] == [2, 2]
    assert env.absorbed["sw-full0"] is None

    alone = HandlerEnvironment(datasets=env.datasets)
    returns = {}
    for i, variant in enumerate(combinations(GRID)):
        summary = await alone.run(BacktestHandler(tmp_path / "alone"), BacktestParams(**BASE, parameters=variant),
                                  op_type=BACKTEST, op_id=f"v{i}")
        returns[json.dumps(variant, sort_keys=True)] = summary.metrics["total_return_pct"]
    ranking = json.loads(env.results.data["sw"])["ranking"]
    assert {json.dumps(r["parameters"], sort_keys=True): r["metrics"]["total_return_pct"] for r in ranking} == returns
    best = (env.records.ops["sw"].result or {})["best"]
    assert best["total_return_pct"] == max(returns.values())
    # The best variant backtested again in full, under its own id, with its curve and trades.
    assert best["op_id"] == "sw-full0" and env.results.data["sw-full0"]
    assert env.children["sw"]["full0"].result["parameters"] == best["parameters"]  # type: ignore[index]


async def test_a_walk_forward_plans_its_folds_with_sweeps_inside_that_are_parents_too(tmp_path: Path) -> None:
    env = environment(tmp_path)
    params = admit_walkforward(WalkForwardParams(**BASE, grid=GRID, folds=2, metric="total_return_pct"))
    outcome = await env.run(WALKFORWARD, params, op_id="wf")
    assert outcome.error is None, outcome.error
    folds = outcome.result.folds  # type: ignore[union-attr]
    assert [f.fold for f in folds] == [0, 1]
    # Each fold's in-sample sweep ran its own plan, under the walk-forward's id.
    assert env.stages["wf-f0is"] == ["blocks"] and env.records.ops["wf-f0is"].parent_id == "wf"
    assert {c.parent_id for c in env.records.ops.values() if c.op_id.startswith("wf-f0is-")} == {"wf-f0is"}
    for fold in folds:
        assert fold.chosen == env.children["wf"][f"f{fold.fold}is"].result["best"]["parameters"]  # type: ignore[index]


async def test_a_sweep_whose_blocks_all_fail_fails_naming_the_first_error(tmp_path: Path) -> None:
    def broken(ctx: object, params: object) -> None:
        raise RuntimeError("disk on fire")

    env = environment(tmp_path)
    env.handlers = {BACKTEST: BacktestHandler(tmp_path / "store"), BACKTEST_BLOCK: broken}
    outcome = await env.run(SWEEP, SweepParams(**BASE, grid=GRID, block_size=2), op_id="sw")
    assert outcome.error == "none of the 2 blocks completed; first error: RuntimeError: disk on fire"
    assert env.records.ops["sw"].status is OpStatus.FAILED
    assert env.stages["sw"] == ["blocks"]
