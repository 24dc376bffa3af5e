from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest import block as block_module
from ktrdr.backtest import metrics as metrics_module
from ktrdr.backtest.block import BlockResult, Variants, run_block
from ktrdr.backtest.sweep import combinations
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.data import synth
from ktrdr.strategy import RuleStrategy, StrategyError, compute_indicators, load_strategy, with_parameters
from ktrdr.strategy import signals as signals_module
from ktrdr.strategy.signals import IndicatorCache, spec_key

BARS = synth("SYNTH", "1h", "2020-01-01", 3000, seed=7)
CONFIG = BacktestConfig()
SMA_GRID = combinations({"fast": [5, 10, 20], "slow": [30, 60, 100]})

MACD_CROSS = """
name: macd_cross
indicators:
  macd: {type: macd, fast_period: 12, slow_period: 26}
rules:
  entry_long: {cross_above: [macd.macd, macd.signal]}
  exit_long: {cross_below: [macd.macd, macd.signal]}
parameters:
  fast: indicators.macd.fast_period
  slow: indicators.macd.slow_period
"""


def _rules(name: str) -> RuleStrategy:
    strategy = load_strategy(name)
    assert isinstance(strategy, RuleStrategy)
    return strategy


def _alone(strategy: RuleStrategy, params: dict[str, Any], config: BacktestConfig = CONFIG) -> dict[str, Any]:
    """The variant backtested on its own, its metrics as its JSON result has them."""
    result = run_backtest(BARS, with_parameters(strategy, params), config)
    metrics = json.loads(result.to_json_bytes(include_curves=False))["metrics"]
    # The JSON's cleaning is NaN/inf -> None and nothing else: the raw floats are these very values.
    assert metrics == {k: v if not isinstance(v, float) or math.isfinite(v) else None
                       for k, v in result.metrics.items()}
    return metrics


def _assert_exactly(got: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert got is not None
    assert list(got) == list(expected)
    for name, value in expected.items():
        # ==, not approx: a block must give the very floats a lone backtest gives.
        assert got[name] == value and type(got[name]) is type(value), name


def test_every_variant_of_an_sma_grid_gets_exactly_the_metrics_of_its_own_backtest() -> None:
    strategy = _rules("sma_crossover")
    variants = [*SMA_GRID, {"fast": 0, "slow": 30}]
    block = run_block(BARS, strategy, variants, CONFIG)
    assert (block.strategy, block.bars, block.variants) == ("sma_crossover", len(BARS), 10)
    assert block.names == ["fast", "slow"]
    assert block.values == {"fast": [5, 5, 5, 10, 10, 10, 20, 20, 20, 0],
                            "slow": [30, 60, 100, 30, 60, 100, 30, 60, 100, 30]}
    for i, params in enumerate(SMA_GRID):
        _assert_exactly(block.variant_metrics(i), _alone(strategy, params))
    assert len(set(block.metrics["final_equity"][:9])) == 9  # the variants really differ
    assert min(block.metrics["trades"][:9]) > 0


def test_a_refused_variant_is_recorded_with_the_strategys_message_and_the_block_goes_on() -> None:
    strategy = _rules("sma_crossover")
    variants = [{"fast": 0, "slow": 30}, {"fast": 5, "slow": 30}, {"speed": 3}]
    block = run_block(BARS, strategy, variants, CONFIG)
    with pytest.raises(StrategyError) as refused:
        with_parameters(strategy, variants[0])
    assert block.errors[0] == str(refused.value)
    assert "parameters.speed" in block.errors[2]
    assert set(block.errors) == {0, 2}
    assert block.variant_metrics(0) is None and block.variant_metrics(2) is None
    assert all(column[0] is None and column[2] is None for column in block.metrics.values())
    _assert_exactly(block.variant_metrics(1), _alone(strategy, variants[1]))
    assert block.values == {"fast": [0, 5, None], "slow": [30, 30, None], "speed": [None, None, 3]}


def test_a_variant_whose_backtest_raises_is_recorded_and_the_others_match_their_own_backtests() -> None:
    strategy = load_strategy(MACD_CROSS)
    assert isinstance(strategy, RuleStrategy)
    variants = [{"fast": 8, "slow": 21}, {"fast": 30, "slow": 26}, {"fast": 12, "slow": 40}]
    with pytest.raises(ValueError, match="must be < slow_period"):
        run_backtest(BARS, with_parameters(strategy, variants[1]), CONFIG)
    block = run_block(BARS, strategy, variants, CONFIG)
    assert list(block.errors) == [1]
    assert block.errors[1].startswith("ValueError: ") and "must be < slow_period" in block.errors[1]
    _assert_exactly(block.variant_metrics(0), _alone(strategy, variants[0]))
    _assert_exactly(block.variant_metrics(2), _alone(strategy, variants[2]))


def test_rsi_mean_reversion_with_shorts_base_parameters_and_dotted_paths_matches_lone_backtests() -> None:
    strategy = _rules("rsi_mean_reversion")
    assert strategy.allow_short
    config = BacktestConfig(commission=0.0005, slippage=0.0, sizing="all_cash", close_at_end=False)
    base = {"period": 10}
    variants: list[dict[str, Any]] = [{"period": 7}, {}, {"indicators.rsi.period": 21},
                                      {"indicators.rsi.source": "open"}, {"period": 14}]
    block = run_block(BARS, strategy, variants, config, base=base)
    assert block.errors == {}
    assert block.names == ["period", "indicators.rsi.period", "indicators.rsi.source"]
    assert block.values["period"] == [7, 10, 10, 10, 14]
    assert block.values["indicators.rsi.period"] == [None, None, 21, None, None]
    for i, variant in enumerate(variants):
        params = {**base, **variant}
        _assert_exactly(block.variant_metrics(i), _alone(strategy, params, config))
        result = run_backtest(BARS, with_parameters(strategy, params), config)
        assert (result.trades["side"] < 0).any()  # the short side really trades
    assert len(set(block.metrics["final_equity"])) == len(variants)


def test_the_cache_computes_each_distinct_indicator_once_across_variants_and_ids(
        monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[dict[str, Any]] = []
    real = signals_module.compute

    def counting(spec: dict[str, Any], bars: pd.DataFrame) -> pd.Series | pd.DataFrame:
        computed.append(dict(spec))
        return real(spec, bars)

    monkeypatch.setattr(signals_module, "compute", counting)
    signals_module.SHARED.clear()  # nothing kept from other blocks on these bars
    variants = combinations({"fast": [5, 10, 20], "slow": [20, 30, 60]})
    block = run_block(BARS, _rules("sma_crossover"), variants, CONFIG)
    assert block.errors == {}
    # Period 20 is a fast one and a slow one: one computation serves both ids.
    assert sorted(spec["period"] for spec in computed) == [5, 10, 20, 30, 60]


def test_cached_indicators_and_backtests_are_identical_to_uncached_ones() -> None:
    strategy = load_strategy(MACD_CROSS)
    assert isinstance(strategy, RuleStrategy)
    cache = IndicatorCache(BARS)
    cached = compute_indicators(strategy, BARS, cache=cache)
    again = compute_indicators(strategy, BARS, cache=cache)
    plain = compute_indicators(strategy, BARS)
    assert again["macd"] is cached["macd"] and (cache.computed, cache.reused) == (1, 1)
    pd.testing.assert_frame_equal(cached["macd"], plain["macd"], check_exact=True)
    with_cache = run_backtest(BARS, strategy, CONFIG, cache=cache)
    without = run_backtest(BARS, strategy, CONFIG)
    assert with_cache.metrics == without.metrics
    assert np.array_equal(with_cache.equity, without.equity)


def test_a_cache_refuses_any_other_bars_frame_even_an_equal_copy() -> None:
    strategy = _rules("sma_crossover")
    cache = IndicatorCache(BARS)
    with pytest.raises(ValueError, match="another bars frame"):
        compute_indicators(strategy, BARS.copy(), cache=cache)
    with pytest.raises(ValueError, match="another bars frame"):
        run_backtest(BARS.iloc[:100], strategy, CONFIG, cache=cache)


def test_a_spec_that_fails_is_not_cached_and_keys_tell_integers_floats_and_booleans_apart() -> None:
    cache = IndicatorCache(BARS)
    for _ in range(2):
        with pytest.raises(ValueError, match="positive integer"):
            cache.get({"type": "sma", "period": 0})
    assert len(cache) == 0
    assert spec_key({"type": "sma", "period": 5}) == spec_key({"period": 5, "type": "sma"})
    keys = {spec_key({"type": "sma", "period": v}) for v in (1, 1.0, True)}
    assert len(keys) == 3
    assert spec_key({"type": "x", "levels": [1, 2]}) != spec_key({"type": "x", "levels": (1, 2)})


def test_a_repeated_parameter_set_is_served_once_but_a_float_period_is_still_refused() -> None:
    strategy = _rules("sma_crossover")
    block = run_block(BARS, strategy, [{"fast": 5}, {"fast": 5}, {"fast": 5.0}], CONFIG)
    assert block.variant_metrics(0) == block.variant_metrics(1) is not None
    assert list(block.errors) == [2] and "positive integer" in block.errors[2]


def test_the_cheap_variant_path_builds_the_strategy_with_parameters_builds() -> None:
    strategy = load_strategy(MACD_CROSS)
    assert isinstance(strategy, RuleStrategy)
    variants = Variants(strategy)
    for params in ({"fast": 5}, {"fast": 5, "slow": 30}, {"slow": 30, "indicators.macd.fast_period": 3},
                   {"indicators.macd.source": "open"}, {"indicators.macd.signal_period": 4, "fast": 6},
                   {}):
        built, expected = variants(params), with_parameters(strategy, params)
        assert built.model_dump() == expected.model_dump(), params
        assert built.indicator_specs() == expected.indicator_specs()
    for refused in ({"fast": 0}, {"indicators.macd.bogus": 1}, {"nope": 1}, {"indicators.nope.period": 3}):
        with pytest.raises(StrategyError) as got:
            variants(refused)
        with pytest.raises(StrategyError) as expected_error:
            with_parameters(strategy, refused)
        assert str(got.value) == str(expected_error.value)


def test_progress_reports_after_every_variant() -> None:
    seen: list[tuple[int, int]] = []
    run_block(BARS, _rules("sma_crossover"), SMA_GRID[:4], CONFIG, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancelling_mid_block_raises_operation_cancelled_before_the_next_variant() -> None:
    token = CancelToken()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            token.cancel("stop")

    with pytest.raises(OperationCancelled, match="stop"):
        run_block(BARS, _rules("sma_crossover"), SMA_GRID, CONFIG, cancel=token, progress=progress)
    assert seen == [1, 2, 3]


def test_a_block_round_trips_through_json_without_nan() -> None:
    strategy = _rules("sma_crossover")
    # fast == slow never crosses: no trades, so the trade ratios are undefined (None).
    variants = [{"fast": 5, "slow": 30}, {"fast": 0}, {"fast": 30, "slow": 30}]
    block = run_block(BARS, strategy, variants, CONFIG)
    assert block.metrics["win_rate"][2] is None
    data = block.to_json_bytes()
    doc = json.loads(data, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["format"] == "ktrdr.backtest.block/1"
    assert data == json.dumps(doc, separators=(",", ":")).encode()  # compact
    back = BlockResult.from_json_bytes(data)
    assert back == block and list(back.errors) == [1]
    assert back.variant_metrics(0) == _alone(strategy, variants[0])
    with pytest.raises(ValueError, match="not a block result"):
        BlockResult.from_json_bytes(b'{"format": "ktrdr.backtest.result/1"}')


def test_an_empty_bars_frame_or_a_neuro_fuzzy_strategy_is_refused_for_the_whole_block() -> None:
    with pytest.raises(ValueError, match="no bars"):
        run_block(BARS.iloc[:0], _rules("sma_crossover"), SMA_GRID, CONFIG)
    with pytest.raises(TypeError, match="rule-based"):
        run_block(BARS, load_strategy("neuro_mean_reversion"), SMA_GRID, CONFIG)  # type: ignore[arg-type]


# --- the vectorised block (ktrdr.backtest.batch) against lone backtests --------------------------------------

def _lone(bars: pd.DataFrame, strategy: RuleStrategy, params: dict[str, Any], config: BacktestConfig,
          trade_from: int = 0) -> dict[str, Any] | str:
    """The variant backtested on its own: its metrics as its JSON result has them, or its error as a block
    records it."""
    try:
        variant = with_parameters(strategy, params)
    except StrategyError as exc:
        return str(exc)
    try:
        result = run_backtest(bars, variant, config, trade_from=trade_from)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return json.loads(result.to_json_bytes(include_curves=False))["metrics"]


def _assert_block_is_its_lone_backtests(block: BlockResult, bars: pd.DataFrame, strategy: RuleStrategy,
                                        variants: list[dict[str, Any]], config: BacktestConfig,
                                        trade_from: int = 0) -> None:
    for i, params in enumerate(variants):
        expected = _lone(bars, strategy, params, config, trade_from)
        if isinstance(expected, str):
            assert block.errors.get(i) == expected, params
        else:
            _assert_exactly(block.variant_metrics(i), expected)


def test_many_random_variants_and_configs_get_exactly_the_metrics_of_their_own_backtests() -> None:
    rng = np.random.default_rng(26)
    macd = load_strategy(MACD_CROSS)
    assert isinstance(macd, RuleStrategy)
    cases = [(_rules("sma_crossover"), {"fast": (0, 3, 5, 8, 13, 21), "slow": (10, 20, 34, 55, 89)}),
             (_rules("rsi_mean_reversion"), {"period": (2, 5, 7, 14, 21, 30)}),
             (macd, {"fast": (5, 8, 12, 30), "slow": (13, 26, 40)})]
    for strategy, values in cases:
        for _ in range(3):
            config = BacktestConfig(initial_capital=float(rng.choice([1_000.0, 100_000.0, 7_777.5])),
                                    commission=float(rng.choice([0.0, 0.001, 0.004])),
                                    slippage=float(rng.choice([0.0, 0.0005, 0.003])),
                                    sizing=str(rng.choice(["fraction", "all_cash"])),  # type: ignore[arg-type]
                                    fraction=float(rng.choice([0.2, 0.5, 1.0])), close_at_end=bool(rng.integers(2)))
            variants = [{name: int(rng.choice(options)) for name, options in values.items()} for _ in range(30)]
            trade_from = int(rng.choice([0, 150]))
            block = run_block(BARS, strategy, variants, config, trade_from=trade_from)
            _assert_block_is_its_lone_backtests(block, BARS, strategy, variants, config, trade_from)


def test_a_variant_whose_fills_meet_a_zero_or_missing_open_gets_what_its_own_backtest_gets() -> None:
    strategy = _rules("rsi_mean_reversion")
    config = BacktestConfig(commission=0.001, slippage=0.0005)
    variants = [{"period": p} for p in (5, 7, 9, 11, 14, 21)]
    entries = run_backtest(BARS, with_parameters(strategy, variants[0]), config).trades["entry_bar"]
    bars = BARS.copy()
    bars.iloc[int(entries[2]), bars.columns.get_loc("open")] = 0.0  # variant 0 enters there: 1 / 0
    bars.iloc[int(entries[5]), bars.columns.get_loc("open")] = np.nan
    block = run_block(bars, strategy, variants, config)
    assert block.errors[0] == "ZeroDivisionError: float division by zero"
    _assert_block_is_its_lone_backtests(block, bars, strategy, variants, config)


def test_a_block_in_many_small_batches_and_curve_chunks_is_the_same_and_reports_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = _rules("sma_crossover")
    variants = [*combinations({"fast": [5, 10, 20, 40], "slow": [30, 60, 100]}), {"fast": 0}, {"fast": 5, "slow": 30}]
    whole = run_block(BARS, strategy, variants, CONFIG)
    monkeypatch.setattr(block_module, "BATCH_ROWS", 2)
    monkeypatch.setattr(block_module, "CURVE_CELLS", 2 * len(BARS) - 1)  # one curve at a time
    seen: list[tuple[int, int]] = []
    split = run_block(BARS, strategy, variants, CONFIG, progress=lambda d, t: seen.append((d, t)))
    assert split == whole and list(split.errors) == [12]
    assert seen == [(i, 14) for i in range(1, 15)]
    monkeypatch.setattr(block_module, "BATCH_ROWS", 2048)
    monkeypatch.setattr(block_module, "BATCH_CHANGES", 1)  # a batch per variant
    assert run_block(BARS, strategy, variants, CONFIG) == whole


def test_where_numpy_would_not_sum_rows_as_vectors_each_curve_is_reduced_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = _rules("rsi_mean_reversion")
    variants = [{"period": p} for p in (3, 7, 14, 30)]
    together = run_block(BARS, strategy, variants, CONFIG)
    monkeypatch.setattr(metrics_module, "rows_sum_as_vectors", lambda rows, n: False)
    assert run_block(BARS, strategy, variants, CONFIG) == together
    _assert_block_is_its_lone_backtests(together, BARS, strategy, variants, CONFIG)


def test_blocks_share_indicators_across_frames_of_the_same_data_and_never_across_different_data(
        monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[int] = []
    real = signals_module.compute

    def counting(spec: dict[str, Any], bars: pd.DataFrame) -> pd.Series | pd.DataFrame:
        computed.append(spec["period"])
        return real(spec, bars)

    monkeypatch.setattr(signals_module, "compute", counting)
    signals_module.SHARED.clear()
    strategy = _rules("sma_crossover")
    first = run_block(BARS, strategy, SMA_GRID, CONFIG)
    assert sorted(computed) == [5, 10, 20, 30, 60, 100]
    # The next block on a copy of the same bars (a worker loads each block's frame anew): nothing computed.
    computed.clear()
    again = run_block(BARS.copy(), strategy, SMA_GRID, CONFIG)
    assert computed == [] and again.metrics == first.metrics
    # Other data (one close changed; or the same values a bar later): another key, all computed again,
    # and each variant is exactly its own backtest on that data.
    changed = BARS.copy()
    changed.iloc[1500, changed.columns.get_loc("close")] *= 1.01
    later = BARS.copy()
    later.index = later.index + pd.Timedelta(hours=1)
    keys = {signals_module.dataset_key(frame) for frame in (BARS, BARS.copy(), changed, later)}
    assert len(keys) == 3
    for frame in (changed, later):
        computed.clear()
        block = run_block(frame, strategy, SMA_GRID, CONFIG)
        assert sorted(computed) == [5, 10, 20, 30, 60, 100]
        for i, params in enumerate(SMA_GRID):
            result = run_backtest(frame, with_parameters(strategy, params), CONFIG)
            expected = json.loads(result.to_json_bytes(include_curves=False))["metrics"]
            _assert_exactly(block.variant_metrics(i), expected)
    # Not shared: computed per block, as before.
    computed.clear()
    run_block(BARS, strategy, SMA_GRID, CONFIG, shared_indicators=False)
    assert sorted(computed) == [5, 10, 20, 30, 60, 100]


def test_shared_indicators_stay_under_their_byte_bound_dropping_the_least_recently_used() -> None:
    shared = signals_module.SharedIndicators(max_bytes=3 * 8 * 100)
    series = [pd.Series(np.full(100, float(i))) for i in range(5)]
    for i, s in enumerate(series[:3]):
        shared.put(("data", i), s)
    assert len(shared) == 3 and shared.bytes == 3 * 800
    assert shared.get(("data", 0)) is series[0]  # now the most recently used
    shared.put(("data", 3), series[3])
    assert shared.get(("data", 1)) is None and shared.get(("data", 0)) is series[0]
    assert shared.bytes <= shared.max_bytes
    shared.put(("data", 9), pd.Series(np.zeros(1000)))  # larger than the whole bound: not kept
    assert shared.get(("data", 9)) is None and len(shared) == 3


def test_variants_the_batch_cannot_vouch_for_get_their_own_backtests_metrics_among_the_others() -> None:
    strategy = _rules("sma_crossover")
    # Shares past 2**53 (a float no longer counts them exactly): the trading variants are backtested alone.
    config = BacktestConfig(initial_capital=1e19, sizing="all_cash")
    variants = [{"fast": 5, "slow": 30}, {"fast": 30, "slow": 30}, {"fast": 10, "slow": 60}, {"fast": 20, "slow": 20},
                {"fast": 5, "slow": 30}]
    block = run_block(BARS, strategy, variants, config)
    assert block.errors == {} and block.metrics["trades"][0] > 0 and block.metrics["trades"][1] == 0
    _assert_block_is_its_lone_backtests(block, BARS, strategy, variants, config)


def test_a_variant_whose_annualised_return_overflows_gets_its_own_backtests_error_and_the_others_their_metrics(
        ) -> None:
    strategy = _rules("sma_crossover")
    bars = BARS.copy()
    bars.iloc[-1, bars.columns.get_loc("close")] *= 1.5  # a few bars of minutes that gain half: a power past floats
    config = BacktestConfig(timeframe="1m", fraction=1.0)
    variants = [{"fast": 3, "slow": 20}, {"fast": 30, "slow": 30}, {"fast": 0}, {"fast": 5, "slow": 20},
                {"fast": 20, "slow": 20}]
    block = run_block(bars, strategy, variants, config, trade_from=len(bars) - 10)
    assert block.errors[0].startswith("OverflowError: ") and set(block.errors) == {0, 2, 3}
    assert block.metrics["trades"][1] == 0 and block.metrics["trades"][4] == 0
    _assert_block_is_its_lone_backtests(block, bars, strategy, variants, config, trade_from=len(bars) - 10)


def test_a_block_whose_parameter_sets_repeat_gives_each_variant_its_sets_metrics() -> None:
    strategy = _rules("sma_crossover")
    variants = [{"fast": 5, "slow": 30}, {"fast": 10, "slow": 30}, {"fast": 5, "slow": 30}, {"fast": 0},
                {"fast": 10, "slow": 30}, {"fast": 0}]
    block = run_block(BARS, strategy, variants, CONFIG)
    assert list(block.errors) == [3, 5]
    assert block.variant_metrics(2) == block.variant_metrics(0) and block.variant_metrics(4) == block.variant_metrics(1)
    _assert_block_is_its_lone_backtests(block, BARS, strategy, variants, CONFIG)


def test_when_every_variants_metrics_raise_the_block_records_each_ones_error_and_no_metrics() -> None:
    strategy = _rules("sma_crossover")
    bars = BARS.copy()
    bars.iloc[100, bars.columns.get_loc("close")] = 0.0  # the first close of the window: buy and hold divides by it
    variants = [{"fast": 5, "slow": 30}, {"fast": 30, "slow": 30}]
    block = run_block(bars, strategy, variants, CONFIG, trade_from=100)
    assert block.errors == dict.fromkeys(range(2), "ZeroDivisionError: float division by zero") and block.metrics == {}
    _assert_block_is_its_lone_backtests(block, bars, strategy, variants, CONFIG, trade_from=100)
