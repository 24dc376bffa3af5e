"""A sweep's ranking is put together column by column from its blocks' JSON, and its document is byte
for byte the one written the plain way: every block decoded, a dict per variant, ranked by the
objective, ``json.dumps`` of the lot."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ktrdr.backtest.block import BlockResult
from ktrdr.backtest.sweep import combinations_between, neighbourhood
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK
from ktrdr.optypes.parent import ChildState
from ktrdr.optypes.ranking import BlockColumns
from ktrdr.optypes.sweep import RANKING_FORMAT, SWEEP, SweepPlan
from subjects.models import OpStatus
from subjects.objective import summarise_exclusions
from subjects.params import SweepParams

ODD = {"total_return": [1.5, -0.0, 1e-300, 12345678901234567890.0, None],
       "trades": [0, 3, 2**60, -1, 7], "flag": [True, False, None, True, False],
       "basis": ["1h bars: a, b [c] \"d\"", "é ü", "]", ",", ""],  # strings: commas, brackets, quotes
       "mixed": [1, "two", None, 4.25, "]\",["], "empty": [None] * 5, "sharpe_ratio": [0.5, 2.0, -1.0, None, 2.0]}


def _block(metrics: dict[str, list[Any]], variants: int, errors: dict[int, str] | None = None,
           values: list[Any] | None = None) -> BlockResult:
    return BlockResult(strategy="s, \"t\"", bars=10, variants=variants, names=["p"],
                       values={"p": values if values is not None else list(range(variants))}, metrics=metrics,
                       errors=errors or {})


def _plain(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def test_a_blocks_columns_are_its_variants_metrics_and_parameters_as_json_writes_them() -> None:
    block = _block(ODD, 5, errors={3: "boom"}, values=["a,b", {"nested": "[x]"}, 3, None, "%s \\u0000"])
    read = ["sharpe_ratio", "trades", "max_drawdown_pct", "basis"]
    parsed = BlockColumns.parse(block.to_json_bytes(), read)
    assert parsed.texts == [_plain({m: column[i] for m, column in ODD.items()}) for i in range(5)]
    assert parsed.read == {"sharpe_ratio": ODD["sharpe_ratio"], "trades": ODD["trades"],
                           "max_drawdown_pct": [None] * 5, "basis": ODD["basis"]}
    assert parsed.errors == {3: "boom"} and parsed.parameters(1) == {"p": {"nested": "[x]"}}
    assert parsed.parameter_texts() == [_plain({"p": v}) for v in block.values["p"]]


def test_a_block_text_laid_out_otherwise_is_decoded_in_full_with_the_same_columns() -> None:
    block = _block({"a": [1.0, 2.5], "b": [None, 3]}, 2)
    reordered = json.dumps({"metrics": block.metrics, **json.loads(block.to_json_bytes())}).encode()
    parsed = BlockColumns.parse(reordered, ["b"])
    assert parsed.texts == ['{"a":1.0,"b":null}', '{"a":2.5,"b":3}'] and parsed.read == {"b": [None, 3]}


# --- the whole reduction, against the plain way --------------------------------------------------

GRID = {"fast": [5, 10, 15, 20, 25], "slow": [20, 30, 40, 50]}


class _Results:
    """What a reduction reads (``ParentEnv``): block results by op id, and what was absorbed of them."""

    op_id = "sw"

    def __init__(self, stored: Mapping[str, bytes], absorbed: Mapping[str, Any] | None = None) -> None:
        self.stored = stored
        self.absorbed_ = absorbed or {}
        self.read: list[str] = []

    async def absorbed(self, op_id: str) -> Any:
        return self.absorbed_.get(op_id)

    async def result(self, op_id: str) -> bytes | None:
        self.read.append(op_id)
        return self.stored.get(op_id)

    def worker_slots(self, capability: str) -> int:
        return 2

    async def bar_index(self, symbol: str, timeframe: str, start: Any, end: Any) -> pd.DatetimeIndex:
        raise AssertionError("not read by a reduction")


def _sweep(rng: random.Random, size: int,
           **objective: Any) -> tuple[SweepParams, dict[str, ChildState], dict[str, bytes]]:
    params = SweepParams(strategy="sma_crossover", symbol="S", timeframe="1h", grid=GRID, block_size=size,
                         parameters={"fast": 1, "extra": "x"}, top=3, full_results=2, objective=objective)
    children: dict[str, ChildState] = {}
    stored: dict[str, bytes] = {}
    total = 20
    for n, first in enumerate(range(0, total, size)):
        stop = min(first + size, total)
        combos = list(combinations_between(GRID, first, stop))
        count = stop - first

        def column(make: Any, count: int = count) -> list[Any]:
            return [None if rng.random() < 0.1 else make() for _ in range(count)]

        metrics = {"total_return_pct": column(lambda: rng.uniform(-50, 50)), "sharpe_ratio": column(
                       lambda: rng.choice([rng.gauss(0, 1), 1.0, -0.0, 0.0])),
                   "max_drawdown_pct": column(lambda: rng.uniform(0, 30)), "trades": column(lambda: rng.randint(0, 9)),
                   "win_rate": column(rng.random), "annualization_basis": ["1h: 6,048 bars a year"] * count}
        errors = {i: f"variant {first + i} failed" for i in range(count) if rng.random() < 0.1}
        block = BlockResult(strategy="sma_crossover", bars=100, variants=count, names=["fast", "slow"],
                            values={"fast": [c["fast"] for c in combos], "slow": [c["slow"] for c in combos]},
                            metrics=metrics, errors=errors)
        op_id = f"sw-b{n}"
        status = [OpStatus.COMPLETED, OpStatus.COMPLETED, OpStatus.FAILED, OpStatus.CANCELLED][n % 4] if n else \
            OpStatus.COMPLETED
        children[f"b{n}"] = ChildState(key=f"b{n}", op_id=op_id, type=BACKTEST_BLOCK.name, status=status,
                                       params={"first": first, "stop": stop},
                                       error="lost" if status is OpStatus.FAILED else None)
        stored[op_id] = block.to_json_bytes()
    for k, (fast, slow, status) in enumerate([(10, 30, OpStatus.COMPLETED), (5, 50, OpStatus.FAILED)]):
        children[f"full{k}"] = ChildState(key=f"full{k}", op_id=f"sw-full{k}", type="backtesting", status=status,
                                          params={"parameters": {"fast": fast, "slow": slow, "extra": "x"}})
    return params, children, stored


def _plain_document(params: SweepParams, children: Mapping[str, ChildState], stored: Mapping[str, bytes]) -> bytes:
    """The ranking document as the reduction wrote it before it worked on columns."""
    blocks = sorted((c for c in children.values() if c.type == BACKTEST_BLOCK.name), key=lambda c: int(c.key[1:]))
    full = {json.dumps(c.params["parameters"], sort_keys=True, default=str): c
            for c in children.values() if c.key.startswith("full")}
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    cancelled = 0
    for block in blocks:
        first, stop = block.params["first"], block.params["stop"]
        if not block.completed:
            if block.status is OpStatus.CANCELLED:
                cancelled += stop - first
            else:
                failed += [{"index": i, "block": block.op_id, "error": block.error} for i in range(first, stop)]
            continue
        result = BlockResult.from_json_bytes(stored[block.op_id])
        for i in range(result.variants):
            parameters = {name: result.values[name][i] for name in result.names}
            if i in result.errors:
                failed.append({"index": first + i, "parameters": parameters, "block": block.op_id,
                               "error": result.errors[i]})
            else:
                entries.append({"index": first + i, "parameters": parameters, "metrics": result.variant_metrics(i),
                                "block": block.op_id})
    around = neighbourhood({e["index"]: e["metrics"].get(params.metric) for e in entries}, params.grid)
    for e in entries:
        e["neighbourhood"], e["neighbours"] = around.get(e["index"], (None, 0))
    ranked = [{"rank": k + 1, **r} for k, r in enumerate(params.objective.rank(entries, base=params.parameters))]
    for r in ranked:
        merged = {**params.parameters, **r["parameters"]}
        again = full.get(json.dumps(merged, sort_keys=True, default=str)) if any(
            merged == c.params["parameters"] for c in full.values()) else None
        r["op_id"] = again.op_id if again is not None and again.completed else None
    met = [r for r in ranked if r["eligible"]]
    no_best = None if met or not ranked else (
        f"no variant met the objective ({params.objective.describe()}): {summarise_exclusions(ranked)}")
    return _plain({"format": RANKING_FORMAT, "sweep": "sw", "metric": params.metric,
                   "descending": params.ranks_descending, "objective": params.objective.model_dump(mode="json"),
                   "eligible": len(met), "no_best": no_best, "grid": params.grid, "combinations": 20,
                   "blocks": len(blocks), "completed": len(entries), "failed": failed, "cancelled": cancelled,
                   "ranking": ranked}).encode()


async def test_the_ranking_is_byte_for_byte_the_plain_one_whatever_the_objective_losses_and_absorbing() -> None:
    rng = random.Random(26)
    objectives: list[dict[str, Any]] = [{}, {"metric": "max_drawdown_pct", "min_trades": 3},
                                        {"metric": "win_rate", "max_drawdown_pct": 12.5, "require": ["fast < slow"]},
                                        {"metric": "trades", "min_trades": 100}, {"require": ["extra == 3"]}]
    for objective in objectives:
        for size in (3, 7, 20):
            params, children, stored = _sweep(rng, size, **objective)
            prepared = {"variants": 20, "block_size": size, "slots": 2}
            reduced = await SweepPlan().reduce(params, prepared, children, _Results(stored))
            assert reduced.document == _plain_document(params, children, stored), (objective, size)
            # Blocks absorbed as they completed, some of them (the others, as after a restart, are
            # read by the reduction itself): the same document, and the same outcome.
            absorbed = {c.op_id: await SweepPlan().absorb(params, c, _Results(stored))
                        for c in children.values() if rng.random() < 0.7}
            env = _Results(stored, absorbed)
            again = await SweepPlan().reduce(params, prepared, children, env)
            assert again.document == reduced.document and again.result == reduced.result, (objective, size)
            assert sorted(env.read) == sorted(c.op_id for c in children.values() if c.completed
                                              and c.type == BACKTEST_BLOCK.name and absorbed.get(c.op_id) is None)
            ranking = json.loads(reduced.document or b"")["ranking"]
            result = SWEEP.result_dict(reduced.result)
            best = [r for r in ranking if r["eligible"]][: params.top]
            assert [t["index"] for t in result["top"]] == [r["index"] for r in best]
            for entry, top in zip(best, result["top"], strict=True):
                assert top["op_id"] == entry["op_id"] and top["neighbourhood"] == entry["neighbourhood"]
                assert top[params.metric] == entry["metrics"].get(params.metric)
                assert top["parameters"] == entry["parameters"]
            assert (result["no_best"] is None) == bool(best) or not ranking
