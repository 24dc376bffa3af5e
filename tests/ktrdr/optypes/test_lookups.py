"""Admission checks what params name against what is stored, through read-only lookups: a request on
bars that are not stored is refused on the field at fault, naming what is; a cached answer never
refuses anything that a fresh one would let through."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pytest

from ktrdr.data import synth
from ktrdr.data.catalog import StoredData
from ktrdr.optypes import Rejected
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.lookups import Unreadable, stored_bars
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.harness import HandlerEnvironment, MemoryLookups
from tests.ktrdr.training.planted import SYMBOL, planted_bars, strategy_yaml


def stored() -> HandlerEnvironment:
    env = HandlerEnvironment()
    env.datasets.put_bars("EURUSD", "1d", synth("EURUSD", "1d", "2020-01-01", 1827, 1))
    env.datasets.put_bars("AAPL", "1h", synth("AAPL", "1h", "2021-03-01 14:00", 500, 2))
    return env


async def refusal(env: HandlerEnvironment, **params: object) -> tuple[str, str]:
    with pytest.raises(Rejected) as refused:
        await env.admit(BACKTEST, {"strategy": "sma_crossover", **params})
    return refused.value.field, refused.value.message


async def test_bars_of_a_symbol_not_stored_are_refused_naming_every_dataset_stored() -> None:
    field, message = await refusal(stored(), symbol="GBPUSD", timeframe="1h")
    assert field == "symbol"
    assert message.startswith("no bars for GBPUSD 1h in the data store; stored: AAPL 1h 2021-03-01 14:00..2021-03-22 "
                              "09:00 (500 bars), EURUSD 1d 2020-01-01..2024-12-31 (1,827 bars); import them")


async def test_a_timeframe_not_stored_is_refused_naming_the_symbols_stored_timeframes() -> None:
    field, message = await refusal(stored(), symbol="EURUSD", timeframe="1h")
    assert field == "timeframe"
    assert message.startswith("no EURUSD 1h bars in the data store; stored for EURUSD: EURUSD 1d 2020-01-01..")


@pytest.mark.parametrize(("window", "field"), [
    ({"start": "2025-01-01"}, "start"),
    ({"end": "2019-06-30"}, "end"),
    ({"start": "2018-01-01", "end": "2019-01-01"}, "end"),
])
async def test_a_range_outside_the_stored_bars_is_refused_naming_their_span(window: dict[str, str], field: str
                                                                           ) -> None:
    got, message = await refusal(stored(), symbol="EURUSD", timeframe="1d", **window)
    assert got == field and message.endswith(": stored EURUSD 1d 2020-01-01..2024-12-31 (1,827 bars)")


async def test_a_request_inside_or_overlapping_the_stored_bars_is_admitted_unchanged() -> None:
    env = stored()
    for window in ({}, {"start": "2019-01-01", "end": "2020-06-01"}, {"start": "2024-12-31"}):
        params = await env.admit(BACKTEST, {"strategy": "sma_crossover", "symbol": "EURUSD", "timeframe": "1d",
                                            **window})
        assert params.symbol == "EURUSD"


async def test_a_training_is_checked_on_every_timeframe_its_strategy_needs_after_admit_named_them() -> None:
    env = HandlerEnvironment()
    with pytest.raises(Rejected) as refused:
        await env.admit(TRAINING, {"strategy": strategy_yaml()})
    assert refused.value.field == "symbols" and refused.value.message.startswith(f"no bars for {SYMBOL} 1h")
    env.datasets.put_bars(SYMBOL, "1h", planted_bars(300))
    assert (await env.admit(TRAINING, {"strategy": strategy_yaml()})).symbols == [SYMBOL]


class Stale(MemoryLookups):
    """Answers from a list read before the bars were published unless asked for a fresh one."""

    def __init__(self, env: HandlerEnvironment) -> None:
        super().__init__(records=env.records, datasets=env.datasets)
        self.fresh_reads = 0

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        self.fresh_reads += fresh
        return await super().dataset(symbol, timeframe) if fresh else None


class Down(MemoryLookups):
    async def datasets(self, *, fresh: bool = False) -> Sequence[StoredData]:
        raise Unreadable("JetStream is electing a leader")

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        raise Unreadable("JetStream is electing a leader")


async def test_a_cached_miss_is_asked_again_fresh_before_anything_is_refused() -> None:
    env = stored()
    lookups = Stale(env)
    found = await stored_bars(lookups, symbol="EURUSD", timeframes=["1d"], start=None, end=datetime(2021, 1, 1))
    assert [str(d) for d in found] == ["EURUSD 1d 2020-01-01..2024-12-31 (1,827 bars)"] and lookups.fresh_reads == 1


async def test_a_store_that_cannot_be_read_now_refuses_no_one() -> None:
    env = stored()
    assert await stored_bars(Down(records=env.records, datasets=env.datasets), symbol="NOPE", timeframes=["1h"],
                             start=None, end=None) == []
