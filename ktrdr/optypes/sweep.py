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
import re
from collections.abc import Mapping
from typing import Any

from ktrdr.backtest.block import BlockResult
from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.backtest.sweep import neighbourhood, rank
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK, BacktestBlockParams
from ktrdr.optypes.backtesting import BACKTEST, verify_bars
from ktrdr.optypes.defn import ON_COORDINATOR, OpType, Rejected, declare
from ktrdr.optypes.headlines import number, parameters
from ktrdr.optypes.parent import Child, ChildState, Decision, Fail, ParentEnv, Ready, Reduced, Stage
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

    async def reduce(self, params: SweepParams, prepared: Mapping[str, Any],
                     children: Mapping[str, ChildState], env: ParentEnv) -> Reduced:
        blocks = sorted((c for c in children.values() if c.type == BACKTEST_BLOCK.name),
                        key=lambda c: int(c.key[1:]))
        full = {_key(c.params.get("parameters", {})): c for c in children.values() if c.key.startswith("full")}
        entries: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        cancelled = 0
        # What the ranking reads of a variant's metrics: the objective's and the summary's.
        read = list(dict.fromkeys((*params.objective.metrics_read(), *SUMMARY_METRICS)))
        texts = _RankingText()
        # Read together: tens of small round trips, one after another, were a tenth of a short sweep.
        documents = await asyncio.gather(*(env.result(b.op_id) for b in blocks if b.completed))
        stored = dict(zip((b.op_id for b in blocks if b.completed), documents, strict=True))
        for block in blocks:
            first, stop = int(block.params["first"]), int(block.params["stop"])
            if not block.completed:
                # A whole block lost: each of its variants is listed, with the block's error.
                if block.status is OpStatus.CANCELLED:
                    cancelled += stop - first
                else:
                    failed += [{"index": i, "block": block.op_id, "error": block.error} for i in range(first, stop)]
                continue
            data = stored[block.op_id]
            if data is None:
                return Reduced(error=f"block {block.op_id} completed but stored no result")
            result = BlockResult.from_json_bytes(data)
            # Row by row from the columns at once (zip), not a lookup per variant and name. An entry
            # holds the metrics the ranking reads (``read``); the ranking document gets all of them
            # as text from the block's own JSON (``_RankingText``), not decoded and encoded again.
            names = result.names
            every_parameters = [dict(zip(names, row, strict=True)) for row in
                                zip(*(result.values[name] for name in names), strict=True)] if names else [
                {} for _ in range(stop - first)]
            kept = [m for m in read if m in result.metrics]
            every_metrics = zip(*(result.metrics[m] for m in kept), strict=True) if kept else (
                () for _ in range(stop - first))
            texts.add(first, data, result)
            for i, (values, row) in enumerate(zip(every_parameters, every_metrics, strict=True)):
                if i in result.errors:
                    failed.append({"index": first + i, "parameters": values, "block": block.op_id,
                                   "error": result.errors.get(i)})
                else:
                    entries.append({"index": first + i, "parameters": values,
                                    "metrics": dict(zip(kept, row, strict=True)), "block": block.op_id})
        # How good each variant's neighbourhood is: a plateau from a lone spike (``neighbourhood``).
        around = neighbourhood({e["index"]: e["metrics"].get(params.metric) for e in entries}, params.grid)
        for e in entries:
            mean, count = around.get(e["index"], (None, 0))
            e["neighbourhood"], e["neighbours"] = mean, count
        ranked = [{"rank": i + 1, **r} for i, r in
                  enumerate(params.objective.rank(entries, base=params.parameters))]
        # The few variants backtested in full, found by their parameters: a dict comparison first
        # (cheap), the JSON key (what identifies them) only for those it lets through.
        wanted = [c.params.get("parameters", {}) for c in full.values()]
        for r in ranked:
            again = None
            if wanted:
                merged = {**params.parameters, **r["parameters"]}
                if any(merged == w for w in wanted):
                    again = full.get(_key(merged))
            r["op_id"] = again.op_id if again is not None and again.completed else None
        variants = int(prepared["variants"])
        met = [r for r in ranked if r["eligible"]]
        no_best = None if met or not ranked else (
            f"no variant met the objective ({params.objective.describe()}): {summarise_exclusions(ranked)}")
        top = [{"rank": r["rank"], "index": r["index"], "op_id": r["op_id"], "parameters": r["parameters"],
                params.metric: r["metrics"].get(params.metric), "neighbourhood": r.get("neighbourhood"),
                **{k: r["metrics"].get(k) for k in SUMMARY_METRICS if k != params.metric}}
               for r in met[: params.top]]
        doc = {"format": RANKING_FORMAT, "sweep": env.op_id, "metric": params.metric,
               "descending": params.ranks_descending, "objective": params.objective.model_dump(mode="json"),
               "eligible": len(met), "no_best": no_best, "grid": params.grid, "combinations": variants,
               "blocks": len(blocks), "completed": len(entries), "failed": failed, "cancelled": cancelled,
               "ranking": ranked}
        summary = SweepResult.model_validate({
            "metric": params.metric, "descending": params.ranks_descending,
            "objective": params.objective.model_dump(mode="json"), "combinations": variants,
            "completed": len(entries), "eligible": len(met), "failed": len(failed), "cancelled": cancelled,
            "best": top[0] if top else None, "top": top, "no_best": no_best})
        error = None
        if not entries:
            first_error = failed[0]["error"] if failed else "cancelled"
            error = f"none of the {variants} backtests completed; first error: {first_error}"
        return Reduced(result=summary, error=error, description=f"sweep ranking by {params.objective.describe()}",
                       document=texts.dumps(doc))


class _RankingText:
    """The ranking document's JSON with each variant's metrics spliced in as text: the very bytes of
    ``json.dumps(doc, separators=(",", ":"), allow_nan=False)`` with every metric in its entry.

    A block's JSON (``BlockResult.to_json_bytes``: the same ``json.dumps``) already holds each metric's
    column as text, each value written as ``json.dumps`` writes it anywhere: the text of a column of
    numbers (no commas, brackets or quotes in them) is cut at its commas. A column with a string, or a
    block whose text is not laid out as expected, is encoded again from its values instead.
    """

    _MARK = re.compile(r'"\\u0000(\d+)\\u0000"')

    def __init__(self) -> None:
        self._blocks: list[tuple[int, list[str]]] = []  # first variant, each variant's metrics as text

    def add(self, first: int, data: bytes, result: BlockResult) -> None:
        columns = _column_texts(data.decode(), result)
        pieces = []
        for name, tokens in zip(result.metrics, columns, strict=True):
            prefix = json.dumps(name) + ":"
            pieces.append([prefix + t for t in tokens])
        rows = [",".join(row) for row in zip(*pieces, strict=True)] if pieces else [""] * result.variants
        self._blocks.append((first, rows))

    def text(self, index: int) -> str:
        for first, rows in self._blocks:
            if first <= index < first + len(rows):
                return "{" + rows[index - first] + "}"
        raise KeyError(index)

    def dumps(self, doc: dict[str, Any]) -> bytes:
        ranking = doc["ranking"]
        marked = [{**r, "metrics": f"\x00{k}\x00"} for k, r in enumerate(ranking)]
        text = json.dumps({**doc, "ranking": marked}, separators=(",", ":"), allow_nan=False)
        if self._MARK.findall(text) != [str(k) for k in range(len(ranking))]:  # a value looked like a mark
            whole = [{**r, "metrics": json.loads(self.text(r["index"]))} for r in ranking]
            return json.dumps({**doc, "ranking": whole}, separators=(",", ":"), allow_nan=False).encode()
        by_position = [self.text(r["index"]) for r in ranking]
        return self._MARK.sub(lambda m: by_position[int(m.group(1))], text).encode()


_DECODER = json.JSONDecoder()


def _column_texts(text: str, result: BlockResult) -> list[list[str]]:
    """Each metric column of a block as the text of its values, cut from the block's JSON ``text``."""
    columns: list[list[str]] = []
    at = text.rfind('"metrics":{')  # the last top-level key before "errors", whose values are strings
    pos = at + len('"metrics":{') if at >= 0 else -1
    for name, column in result.metrics.items():
        head = json.dumps(name) + ":["
        tokens: list[str] | None = None
        if pos >= 0 and text.startswith(head, pos):
            start = pos + len(head)
            end = text.find("]", start)
            if end < 0 or '"' in text[start:end]:  # a string may hold anything: step over the list
                end = _DECODER.raw_decode(text, start - 1)[1] - 1
            else:
                cut = text[start:end].split(",") if end > start else []
                tokens = cut if len(cut) == len(column) else None
            pos = end + 2 if end >= 0 and text[end] == "]" else -1  # past "]" and the "," or "}" after it
        else:
            pos = -1  # not the layout expected: this column and the rest from their values
        if tokens is None:
            tokens = [json.dumps(v, separators=(",", ":"), allow_nan=False) for v in column]
        columns.append(tokens)
    return columns


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
