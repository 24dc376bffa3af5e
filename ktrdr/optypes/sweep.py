"""``sweep``: every combination of a parameter grid backtested, ranked by an objective.

Run by the coordinator's parent runner. The combinations are split into blocks, a few per live
backtest worker slot (``block_size`` overrides), each one ``backtest_block`` child that loads the
data once and shares indicators across its variants; 10,000 variants make tens of op records, not
10,000. The best few are then backtested again in full (equity curve and trades, under their own
op ids); any other variant is one ``ktrdr backtest run --set ...`` away. The top entries go in the
parent's result; the whole ranking (every variant's parameters and metrics, failures) in the
``results`` store under the parent's id. Only a variant that meets the objective's constraints
(``subjects.objective``) can be best; when none does, there is no best and the result says why.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.backtest.sweep import neighbourhood, rank
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK, BacktestBlockParams
from ktrdr.optypes.backtesting import BACKTEST, verify_bars
from ktrdr.optypes.defn import ON_COORDINATOR, OpType, Rejected, declare
from ktrdr.optypes.headlines import number, parameters
from ktrdr.optypes.parent import Child, ChildState, Decision, Fail, ParentEnv, Ready, Reduced, Stage
from ktrdr.optypes.ranking import BlockColumns, dumps, number_text
from subjects import names
from subjects.models import OpStatus
from subjects.objective import Objective, summarise_exclusions
from subjects.params import MAX_BLOCK_VARIANTS, BacktestParams, SweepParams
from subjects.results import SweepResult

RANKING_FORMAT = "ktrdr.sweep.ranking/1"
# Metrics copied into each entry of the parent's (small) result beside the ranking metric.
SUMMARY_METRICS = ("total_return_pct", "sharpe_ratio", "max_drawdown_pct", "trades", "win_rate")


def admit_sweep(params: SweepParams) -> SweepParams:
    """The strategy must load with the shared overrides and every combination of the grid, and be
    rule-based: a neuro-fuzzy strategy's decisions come from its trained model."""
    from ktrdr.strategy import RuleStrategy, load_strategy

    try:
        check_strategy(params.strategy, params.parameters, params.grid)
    except RequestProblem as exc:
        raise Rejected(exc.field, exc.message) from None
    strategy = load_strategy(params.strategy)
    if not isinstance(strategy, RuleStrategy):
        raise Rejected("strategy", f"{strategy.name} is neuro-fuzzy: its decisions come from its model; a sweep "
                                   "varies a rule-based strategy's parameters (a walk-forward trains per fold)")
    check_relations(params.objective, params.grid, params.parameters)
    return params


def check_relations(objective: Objective, grid: Mapping[str, Any], parameters: Mapping[str, Any]) -> None:
    """Every parameter a relation names must vary in the grid or be set for every variant: a
    relation on anything else could never be checked, and would exclude every variant."""
    unknown = sorted(objective.parameter_names() - set(grid) - set(parameters))
    if unknown:
        raise Rejected("objective.require", f"{', '.join(unknown)}: not a parameter of the grid or of the "
                                            f"shared parameters ({', '.join(sorted({*grid, *parameters}))})")


BLOCKS_PER_SLOT = 4  # a slow or lost worker then costs a quarter of its share, not all of it
# Below this a block is mostly its fixed cost (claim, data check, result upload: 10-20 ms, against
# ~0.5 ms of engine per variant), so small sweeps get fewer blocks rather than smaller ones.
MIN_BLOCK_VARIANTS = 100


def block_size_for(variants: int, slots: int) -> int:
    """Variants per block: a few blocks per live worker slot (one slot when none is up yet), none
    smaller than ``MIN_BLOCK_VARIANTS`` unless the whole sweep is, and as many blocks as fill every
    slot evenly (five blocks on two slots would leave one slot idle for the last one)."""
    slots = max(1, slots)
    blocks = min(slots * BLOCKS_PER_SLOT, max(1, variants // MIN_BLOCK_VARIANTS))
    if blocks > slots:
        blocks -= blocks % slots
    return max(1, min(MAX_BLOCK_VARIANTS, math.ceil(variants / blocks)))


class SweepPlan:
    """Stage 1: the grid in blocks (``b<n>``, each a ``backtest_block`` child). Stage 2: the best
    ``full_results`` variants, picked from the blocks' own best, backtested again in full
    (``full<n>``: curves and trades). Then the ranking of every variant from the blocks' results."""

    unit = "backtests"

    async def prepare(self, params: SweepParams, env: ParentEnv) -> dict[str, Any]:
        variants = count_combinations(params.grid)
        slots = env.worker_slots(names.CAP_BACKTEST_CPU)
        size = params.block_size or block_size_for(variants, slots)
        return {"variants": variants, "block_size": size, "slots": slots}

    def plan(self, params: SweepParams, prepared: Mapping[str, Any],
             children: Mapping[str, ChildState]) -> Decision:
        blocks = self._blocks(params, prepared)
        variants = int(prepared["variants"])
        total = len(blocks) + min(params.full_results, variants)
        if any(c.key not in children or not children[c.key].ended for c in blocks):
            return Stage(name="blocks", children=blocks, total=total, items=variants,
                         items_type=BACKTEST_BLOCK.name)
        states = [children[c.key] for c in blocks]
        if not any(c.completed for c in states):
            first = next((c for c in states if c.error), states[0])
            return Fail(f"none of the {len(states)} blocks completed; first error: "
                        f"{first.error or first.status.value}")
        full = [Child(key=f"full{i}", type=BACKTEST, params=BacktestParams.model_validate(
                    {**params.child_params(entry["parameters"]), "include_curves": True}))
                for i, entry in enumerate(best_of_blocks(params, states)[: params.full_results])]
        if any(c.key not in children or not children[c.key].ended for c in full):
            return Stage(name="full results", children=[*blocks, *full], total=total, items=variants,
                         items_type=BACKTEST_BLOCK.name)
        return Ready()

    def _blocks(self, params: SweepParams, prepared: Mapping[str, Any]) -> list[Child]:
        variants, size = int(prepared["variants"]), int(prepared["block_size"])
        base = params.model_dump(mode="json", exclude=set(SweepParams.model_fields) - set(BacktestParams.model_fields))
        return [Child(key=f"b{n}", type=BACKTEST_BLOCK, params=BacktestBlockParams.model_validate({
                    **base, "grid": params.grid, "first": first, "stop": min(first + size, variants),
                    "objective": params.objective.model_dump(mode="json"),
                    "top": max(params.top, params.full_results), "include_curves": False}))
                for n, first in enumerate(range(0, variants, size))]

    async def absorb(self, params: SweepParams, child: ChildState, env: ParentEnv) -> BlockColumns | None:
        """A completed block's columns, parsed while the other blocks still run (a tenth of a
        10,000-variant sweep's time was this, after the last block)."""
        if child.type != BACKTEST_BLOCK.name or not child.completed:
            return None
        data = await env.result(child.op_id)
        return None if data is None else BlockColumns.parse(data, _read(params))

    async def reduce(self, params: SweepParams, prepared: Mapping[str, Any],
                     children: Mapping[str, ChildState], env: ParentEnv) -> Reduced:
        blocks = sorted((c for c in children.values() if c.type == BACKTEST_BLOCK.name),
                        key=lambda c: int(c.key[1:]))
        full = {_key(c.params.get("parameters", {})): c for c in children.values() if c.key.startswith("full")}
        failed: list[dict[str, Any]] = []
        cancelled = 0
        read = _read(params)
        completed_ids = [b.op_id for b in blocks if b.completed]
        absorbed: dict[str, BlockColumns | None] = dict(zip(
            completed_ids, await asyncio.gather(*(env.absorbed(op_id) for op_id in completed_ids)), strict=True))
        # Read together: tens of small round trips, one after another, were a tenth of a short sweep.
        missing = [op_id for op_id in completed_ids if absorbed[op_id] is None]
        stored = dict(zip(missing, await asyncio.gather(*(env.result(op_id) for op_id in missing)), strict=True))
        # Every completed variant by its position in grid order, column by column (``ktrdr.optypes.ranking``).
        parts: list[tuple[BlockColumns, list[int], int]] = []  # a block, its completed variants, its first position
        where: list[tuple[BlockColumns, int]] = []
        index: list[int] = []
        block_texts: list[str] = []
        metric_texts: list[str] = []
        parameter_texts: list[str] = []
        columns: dict[str, list[Any]] = {m: [] for m in read}
        for block in blocks:
            first, stop = int(block.params["first"]), int(block.params["stop"])
            if not block.completed:
                # A whole block lost: each of its variants is listed, with the block's error.
                if block.status is OpStatus.CANCELLED:
                    cancelled += stop - first
                else:
                    failed += [{"index": i, "block": block.op_id, "error": block.error} for i in range(first, stop)]
                continue
            part = absorbed[block.op_id]
            if part is None:
                data = stored[block.op_id]
                if data is None:
                    return Reduced(error=f"block {block.op_id} completed but stored no result")
                part = BlockColumns.parse(data, read)
            rows = [i for i in range(part.variants) if i not in part.errors] if part.errors else list(
                range(part.variants))
            failed += [{"index": first + i, "parameters": part.parameters(i), "block": block.op_id,
                        "error": part.errors[i]} for i in range(part.variants) if i in part.errors]
            parts.append((part, rows, len(index)))
            own = part.parameter_texts()
            where += [(part, i) for i in rows]
            index += [first + i for i in rows]
            block_texts += [dumps(block.op_id)] * len(rows)
            metric_texts += [part.texts[i] for i in rows]
            parameter_texts += [own[i] for i in rows]
            for m in read:
                columns[m] += [part.read[m][i] for i in rows]
        completed = len(index)

        def parameters_of(position: int) -> dict[str, Any]:
            part, i = where[position]
            return part.parameters(i)

        # How good each variant's neighbourhood is: a plateau from a lone spike (``neighbourhood``).
        around = neighbourhood(dict(zip(index, columns[params.metric], strict=True)), params.grid)
        base = params.parameters
        order, why = params.objective.order(columns, range(completed),
                                            parameters=lambda position: {**base, **parameters_of(position)})
        op_ids = _full_results(parts, base, full)
        rows_text = []
        for place, position in enumerate(order, start=1):
            mean, count = around.get(index[position], (None, 0))
            reason = why.get(position)
            rows_text.append(_ENTRY % (place, index[position], parameter_texts[position], metric_texts[position],
                                       block_texts[position], number_text(mean), count,
                                       "true" if reason is None else 'false,"excluded":' + dumps(reason),
                                       "null" if (op_id := op_ids.get(position)) is None else dumps(op_id)))
        variants = int(prepared["variants"])
        met = order[: completed - len(why)]  # those that meet the objective come first
        no_best = None if met or not completed else (
            f"no variant met the objective ({params.objective.describe()}): "
            f"{summarise_exclusions({'excluded': why[p]} for p in order)}")
        top = [{"rank": place, "index": index[p], "op_id": op_ids.get(p), "parameters": parameters_of(p),
                params.metric: columns[params.metric][p], "neighbourhood": around.get(index[p], (None, 0))[0],
                **{k: columns[k][p] for k in SUMMARY_METRICS if k != params.metric}}
               for place, p in enumerate(met[: params.top], start=1)]
        head = dumps({"format": RANKING_FORMAT, "sweep": env.op_id, "metric": params.metric,
                      "descending": params.ranks_descending, "objective": params.objective.model_dump(mode="json"),
                      "eligible": len(met), "no_best": no_best, "grid": params.grid, "combinations": variants,
                      "blocks": len(blocks), "completed": completed, "failed": failed, "cancelled": cancelled})
        # The ranking last, as json.dumps of the whole document would write it.
        document = f'{head[:-1]},"ranking":[{",".join(rows_text)}]}}'.encode()
        summary = SweepResult.model_validate({
            "metric": params.metric, "descending": params.ranks_descending,
            "objective": params.objective.model_dump(mode="json"), "combinations": variants,
            "completed": completed, "eligible": len(met), "failed": len(failed), "cancelled": cancelled,
            "best": top[0] if top else None, "top": top, "no_best": no_best})
        error = None
        if not completed:
            first_error = failed[0]["error"] if failed else "cancelled"
            error = f"none of the {variants} backtests completed; first error: {first_error}"
        return Reduced(result=summary, error=error, description=f"sweep ranking by {params.objective.describe()}",
                       document=document)


def _read(params: SweepParams) -> list[str]:
    """What the ranking reads of a variant's metrics: the objective's and the summary's."""
    return list(dict.fromkeys((*params.objective.metrics_read(), *SUMMARY_METRICS)))


# A ranking entry: its members in the order the reduction always wrote them.
_ENTRY = ('{"rank":%d,"index":%d,"parameters":%s,"metrics":%s,"block":%s,"neighbourhood":%s,"neighbours":%d,'
          '"eligible":%s,"op_id":%s}')


def _full_results(parts: list[tuple[BlockColumns, list[int], int]], base: Mapping[str, Any],
                  full: Mapping[str, ChildState]) -> dict[int, str | None]:
    """The op id of each variant backtested again in full (None: that backtest did not complete),
    by its position: the variants whose parameters over ``base`` equal a full result's, found column
    by column (a dict per variant was a tenth of a 10,000-variant reduction)."""
    found: dict[int, str | None] = {}
    for wanted in (c.params.get("parameters", {}) for c in full.values()):
        for part, rows, offset in parts:
            if set(wanted) != set(base) | set(part.names) or any(
                    base[k] != wanted[k] for k in base if k not in part.values):
                continue
            hits = set(rows)
            for name in part.names:
                column, value = part.values[name], wanted[name]
                hits = {i for i in hits if column[i] == value}
            if not hits:
                continue
            position = {i: offset + k for k, i in enumerate(rows)}
            for i in hits:
                again = full.get(_key({**base, **part.parameters(i)}))
                found[position[i]] = again.op_id if again is not None and again.completed else None
    return found


def count_combinations(grid: Mapping[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def best_of_blocks(params: SweepParams, blocks: list[ChildState]) -> list[Mapping[str, Any]]:
    """The sweep's best variants from its blocks' own best (each block names its best ``top``; ties
    go to the earlier variant, as in the full ranking, so these are the ranking's first ones)."""
    entries = [{**t, "metrics": {params.metric: t.get("value")}}
               for b in blocks if b.completed for t in (b.result or {}).get("top", [])]
    entries.sort(key=lambda e: e["index"])
    return rank(entries, params.metric, descending=params.ranks_descending)


def _key(parameters: Mapping[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True, default=str)


def headline(result: dict[str, Any]) -> str:
    """``best fast=15, slow=50: sharpe_ratio 1.23 (12 of 30 variants met the objective)``."""
    counted = f"{result.get('eligible', result['completed'])} of {result['combinations']} variants met the objective"
    best = result.get("best")
    if not best:
        return f"no best: {result.get('no_best') or 'no variant completed'} ({counted})"
    metric = result["metric"]
    return f"best {parameters(best['parameters'])}: {metric} {number(best.get(metric), '.4g')} ({counted})"


SWEEP = declare(OpType(
    name="sweep", params=SweepParams, result=SweepResult, runs=ON_COORDINATOR, parent=SweepPlan(),
    summary="a backtest per combination of a parameter grid, ranked by a metric",
    admit=admit_sweep, verify=verify_bars, api="/api/v1/backtests/sweeps", cli="ktrdr backtest sweep",
    headline=headline))
