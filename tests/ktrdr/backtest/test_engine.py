from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestConfig, BacktestResult, run_backtest, simulate
from ktrdr.backtest.simulator import Opening
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.data import synth
from ktrdr.strategy import load_strategy, with_parameters
from ktrdr.strategy.warmup import warmup_bars
from subjects.params import CarriedPosition, CarryIn

OPEN = np.array([100.0, 100.0, 110.0, 120.0, 130.0])
CLOSE = np.array([100.0, 105.0, 115.0, 125.0, 135.0])
COSTLY = BacktestConfig(initial_capital=1000.0, commission=0.01, slippage=0.01, sizing="all_cash")


def sim(wanted: list[int], config: BacktestConfig = COSTLY):
    return simulate(OPEN, CLOSE, np.array(wanted, dtype=np.int8), config)


def test_long_trade_fills_next_open_with_slippage_and_commission() -> None:
    s = sim([1, 1, 0, 0, 0])
    # Entry at bar 1's open: 100 * 1.01 = 101; floor(1000 / (101 * 1.01)) = 9 shares.
    t = {k: v.tolist() for k, v in s.trades.items()}
    assert t["entry_bar"] == [1] and t["exit_bar"] == [3] and t["size"] == [9] and t["side"] == [1]
    assert t["entry_price"][0] == pytest.approx(101.0)
    assert t["exit_price"][0] == pytest.approx(118.8)  # 120 * 0.99
    cash_after_entry = 1000 - 909 - 9.09
    assert s.equity[0] == 1000
    assert s.equity[1] == pytest.approx(cash_after_entry + 9 * 105)
    assert s.equity[2] == pytest.approx(cash_after_entry + 9 * 115)
    final = cash_after_entry + 9 * 118.8 * 0.99
    assert s.equity[3] == pytest.approx(final) and s.equity[4] == pytest.approx(final)
    assert t["pnl"][0] == pytest.approx(9 * (118.8 - 101) - 9.09 - 10.692)
    assert t["pnl"][0] == pytest.approx(final - 1000)
    assert t["commission"][0] == pytest.approx(9.09 + 10.692)
    assert t["bars_held"] == [2]


def test_short_trade() -> None:
    s = sim([-1, -1, 0, 0, 0])
    # Sell short at 100 * 0.99 = 99: floor(1000 / (99 * 1.01)) = 10 shares; cover at 120 * 1.01.
    assert s.trades["size"].tolist() == [10] and s.trades["side"].tolist() == [-1]
    cash = 1000 + 990 - 9.9
    assert s.equity[1] == pytest.approx(cash - 10 * 105)
    assert s.trades["pnl"][0] == pytest.approx(10 * (99 - 121.2) - 9.9 - 12.12)
    assert s.equity[-1] == pytest.approx(cash - 1212 - 12.12)


def test_reversal_sizes_with_cash_that_includes_the_exit() -> None:
    cfg = BacktestConfig(initial_capital=1000.0, commission=0.0, slippage=0.0, sizing="all_cash")
    s = sim([1, -1, -1, -1, -1], cfg)
    # Long 10 at 100 (bar 1); at bar 2's open 110 exit (cash 1100) and short floor(1100 / 110) = 10.
    assert s.trades["side"].tolist() == [1, -1]
    assert s.trades["size"].tolist() == [10, 10]
    assert s.trades["pnl"][0] == pytest.approx(100.0)
    # The short is closed at the last close 135: 10 * (110 - 135) = -250.
    assert s.trades["pnl"][1] == pytest.approx(-250.0)
    assert s.equity[-1] == pytest.approx(850.0)


def test_signal_on_last_bar_does_not_fill() -> None:
    s = sim([0, 0, 0, 0, 1])
    assert len(s.trades["pnl"]) == 0 and s.open_position is None
    assert s.equity.tolist() == [1000.0] * 5


@pytest.mark.parametrize("close_at_end", [True, False])
def test_position_open_at_end(close_at_end: bool) -> None:
    cfg = BacktestConfig(initial_capital=1000.0, commission=0.01, slippage=0.01, sizing="all_cash",
                         close_at_end=close_at_end)
    s = sim([0, 0, 0, 1, 1], cfg)
    price = 130 * 1.01
    qty = math.floor(1000 / (price * 1.01))
    assert qty == 7
    cash = 1000 - qty * price * 1.01
    if close_at_end:
        exit_price = 135 * 0.99
        assert s.trades["exit_bar"].tolist() == [5] and s.trades["bars_held"].tolist() == [1]
        assert s.trades["exit_price"][0] == pytest.approx(exit_price)
        assert s.equity[-1] == pytest.approx(cash + qty * exit_price * 0.99)
        assert s.open_position is None
    else:
        assert len(s.trades["pnl"]) == 0
        assert s.equity[-1] == pytest.approx(cash + qty * 135)
        assert s.open_position is not None and s.open_position["size"] == qty


def test_fraction_sizing_whole_shares() -> None:
    cfg = BacktestConfig(initial_capital=1000.0, commission=0.0, slippage=0.0, fraction=0.25)
    s = simulate(np.array([125.0, 125.0, 125.0]), np.array([125.0, 125.0, 125.0]), np.array([1, 1, 1]), cfg)
    assert s.trades["size"].tolist() == [2]  # exactly 250 / 125: no float rounding loses a share
    s = sim([1, 1, 0, 0, 0], cfg)
    assert s.trades["size"].tolist() == [2]  # floor(250 / 100) ... at 100: 2.5 -> 2
    cfg = BacktestConfig(initial_capital=1000.0, commission=0.001, slippage=0.0, fraction=0.5)
    s = sim([1, 1, 0, 0, 0], cfg)
    assert s.trades["size"].tolist() == [math.floor(500 / (100 * 1.001))]


def test_entry_too_small_for_one_share_is_skipped() -> None:
    cfg = BacktestConfig(initial_capital=50.0, commission=0.0, slippage=0.0, sizing="all_cash")
    s = sim([1, 1, 0, 0, 0], cfg)
    assert len(s.trades["pnl"]) == 0 and s.skipped_entries == 1
    assert s.equity.tolist() == [50.0] * 5


def _bars(n: int = 3000, seed: int = 3) -> pd.DataFrame:
    return synth("T", "1h", "2021-01-01", n, seed=seed)


def _reference(bars: pd.DataFrame, fast: int, slow: int, cfg: BacktestConfig) -> tuple[list[float], list[tuple]]:
    """An independent bar-by-bar implementation of the long-only SMA crossover."""
    o, c = bars["open"].tolist(), bars["close"].tolist()

    def sma(i: int, p: int) -> float | None:
        return sum(c[i - p + 1:i + 1]) / p if i >= p - 1 else None

    cash, qty, pending = cfg.initial_capital, 0, None
    entry = (0, 0.0, 0.0)
    equity, trades = [], []
    for i in range(len(c)):
        if pending == "buy" and qty == 0:
            price = o[i] * (1 + cfg.slippage)
            q = math.floor(cash * cfg.fraction / (price * (1 + cfg.commission)) + 1e-9)
            if q:
                fee = q * price * cfg.commission
                cash -= q * price + fee
                qty, entry = q, (i, price, fee)
        elif pending == "sell" and qty:
            price = o[i] * (1 - cfg.slippage)
            fee = qty * price * cfg.commission
            cash += qty * price - fee
            trades.append((entry[0], i, qty, qty * (price - entry[1]) - entry[2] - fee))
            qty = 0
        pending = None
        f0, s0, f1, s1 = sma(i - 1, fast), sma(i - 1, slow), sma(i, fast), sma(i, slow)
        if None not in (f0, s0, f1, s1):
            if f0 < s0 and f1 > s1:
                pending = "buy"
            elif f0 > s0 and f1 < s1:
                pending = "sell"
        equity.append(cash + qty * c[i])
    if qty:
        price = c[-1] * (1 - cfg.slippage)
        fee = qty * price * cfg.commission
        cash += qty * price - fee
        trades.append((entry[0], len(c), qty, qty * (price - entry[1]) - entry[2] - fee))
        equity[-1] = cash
    return equity, trades


@pytest.mark.parametrize("fast,slow", [(10, 20), (5, 13)])
def test_crossover_matches_independent_loop(fast: int, slow: int) -> None:
    bars = _bars()
    cfg = BacktestConfig()
    strategy = load_strategy(f"""
name: x
indicators: {{fast: {{type: sma, period: {fast}}}, slow: {{type: sma, period: {slow}}}}}
rules: {{entry_long: {{cross_above: [fast, slow]}}, exit_long: {{cross_below: [fast, slow]}}}}
""")
    result = run_backtest(bars, strategy, cfg)
    equity, trades = _reference(bars, fast, slow, cfg)
    assert len(trades) > 20
    np.testing.assert_allclose(result.equity, equity, rtol=1e-10)
    got = list(zip(result.trades["entry_bar"].tolist(), result.trades["exit_bar"].tolist(),
                   result.trades["size"].tolist(), strict=True))
    assert got == [t[:3] for t in trades]
    np.testing.assert_allclose(result.trades["pnl"], [t[3] for t in trades], rtol=1e-9)


def test_short_strategy_trades_both_sides_and_flat_is_respected() -> None:
    result = run_backtest(_bars(5000), "rsi_mean_reversion", BacktestConfig())
    sides = set(result.trades["side"].tolist())
    assert sides == {1, -1}
    no_short = run_backtest(_bars(5000), "sma_crossover", BacktestConfig())
    assert set(no_short.trades["side"].tolist()) == {1}


def test_progress_reports_bars_date_equity_trades() -> None:
    calls: list[dict] = []
    bars = synth("T", "1m", "2021-01-01", 300_000, seed=1)
    result = run_backtest(bars, "sma_crossover", BacktestConfig(), progress=lambda **kw: calls.append(kw))
    sim_calls = [c for c in calls if c.get("step") == "simulation"]
    assert len(sim_calls) >= 3  # chunks of at most 131,072 bars
    assert [c["items_done"] for c in sim_calls] == sorted(c["items_done"] for c in sim_calls)
    assert sim_calls[-1]["items_done"] == 300_000 and sim_calls[-1]["items_total"] == 300_000
    assert set(sim_calls[-1]["context"]) == {"date", "equity", "trades"}
    assert calls[-1]["percentage"] == 100.0
    assert calls[-1]["context"]["trades"] == result.metrics["trades"]


def test_cancel_stops_the_run() -> None:
    bars = synth("T", "1m", "2021-01-01", 300_000, seed=1)
    token = CancelToken()
    token.cancel("user")
    with pytest.raises(OperationCancelled):
        run_backtest(bars, "sma_crossover", cancel=token)

    token = CancelToken()
    seen: list[int] = []

    def progress(**kw) -> None:
        if kw.get("step") == "simulation":
            seen.append(kw["items_done"])
            token.cancel("midway")

    with pytest.raises(OperationCancelled, match="midway"):
        run_backtest(bars, "sma_crossover", cancel=token, progress=progress)
    assert seen == [131_072]  # stopped at the next chunk


def test_result_json_roundtrip() -> None:
    result = run_backtest(_bars(), "rsi_mean_reversion", BacktestConfig(close_at_end=False))
    back = BacktestResult.from_json_bytes(result.to_json_bytes())
    assert back.metrics.keys() == result.metrics.keys()
    for key in ("sharpe_ratio", "total_return", "trades", "max_drawdown_pct"):
        assert back.metrics[key] == result.metrics[key]
    np.testing.assert_array_equal(back.equity, result.equity)
    np.testing.assert_array_equal(back.index_ns, result.index_ns)
    for k, v in result.trades.items():
        np.testing.assert_array_equal(back.trades[k], v)
    assert back.config == result.config
    pd.testing.assert_frame_equal(back.trades_frame(), result.trades_frame())


def test_trades_frame_columns() -> None:
    result = run_backtest(_bars(), "sma_crossover")
    frame = result.trades_frame()
    assert list(frame.columns[:2]) == ["entry_time", "exit_time"]
    assert (frame["exit_time"] > frame["entry_time"]).all()
    assert result.parameters == {"fast": 10, "slow": 20}


# --- going on from another backtest's end: a carried position --------------------------------------------

# 9 shares bought at 101 (100 and 1 % slippage) paying 9.09, 4 bars before this run: what
# test_long_trade_fills_next_open_with_slippage_and_commission's run holds after its entry.
CARRIED_CASH = 1000 - 909 - 9.09


def carried(wanted_before: int = 1, **overrides: float) -> Opening:
    return Opening(**{"cash": CARRIED_CASH, "side": 1, "size": 9, "entry_price": 101.0, "commission": 9.09,
                      "entry_bar": -4, "wanted_before": wanted_before, **overrides})


def test_a_carried_position_still_wanted_is_kept_and_closes_as_one_trade_with_its_own_entry() -> None:
    s = simulate(OPEN, CLOSE, np.array([1, 1, 0, 0, 0], dtype=np.int8), COSTLY, opening=carried(1))
    t = {k: v.tolist() for k, v in s.trades.items()}
    sold = 120.0 * (1 - 0.01)  # bar 3's open less slippage
    fee = 9 * sold * 0.01
    assert t["entry_bar"] == [-4] and t["exit_bar"] == [3] and t["bars_held"] == [7]
    assert t["size"] == [9] and t["entry_price"] == [101.0] and t["exit_price"] == [sold]
    assert t["commission"] == [9.09 + fee]  # one entry and one exit paid
    assert t["pnl"] == [9 * (sold - 101.0) - 9.09 - fee]
    assert s.equity[:3].tolist() == [CARRIED_CASH + 9 * c for c in (100.0, 105.0, 115.0)]
    assert s.equity[3] == s.equity[4] == CARRIED_CASH + 9 * sold - fee
    assert s.shares.tolist() == [9, 9, 9, 0, 0] and s.open_position is None


def test_a_carried_position_not_wanted_on_is_closed_at_the_first_open_paying_the_exit() -> None:
    s = simulate(OPEN, CLOSE, np.zeros(5, dtype=np.int8), COSTLY, opening=carried(0))
    sold = 100.0 * (1 - 0.01)
    fee = 9 * sold * 0.01
    assert s.trades["exit_bar"].tolist() == [0] and s.trades["exit_price"].tolist() == [sold]
    assert s.trades["commission"].tolist() == [9.09 + fee] and s.trades["bars_held"].tolist() == [4]
    assert s.trades["pnl"].tolist() == [9 * (sold - 101.0) - 9.09 - fee]
    assert s.equity.tolist() == [CARRIED_CASH + 9 * sold - fee] * 5 and not s.shares.any()


def test_a_carried_position_the_strategy_turns_against_is_reversed_at_the_first_open() -> None:
    s = simulate(OPEN, CLOSE, np.full(5, -1, dtype=np.int8), COSTLY, opening=carried(-1))
    assert s.trades["side"].tolist() == [1, -1] and s.trades["entry_bar"].tolist() == [-4, 0]
    sold = 100.0 * (1 - 0.01)
    cash = CARRIED_CASH + 9 * sold - 9 * sold * 0.01
    assert s.trades["size"].tolist()[1] == math.floor(cash / (sold * 1.01) + 1e-9)  # sized with the exit's cash


def test_carried_in_flat_the_wish_before_the_first_bar_fills_at_its_open() -> None:
    wanted = np.array([1, 1, 0, 0, 0], dtype=np.int8)
    s = simulate(OPEN, CLOSE, wanted, COSTLY, opening=Opening(cash=1000.0, wanted_before=1))
    assert s.trades["entry_bar"].tolist() == [0] and s.trades["exit_bar"].tolist() == [3]
    assert simulate(OPEN, CLOSE, wanted, COSTLY).trades["entry_bar"].tolist() == [1]  # a fresh run starts flat


@pytest.mark.parametrize("split", [1, 57, 150, 298])
def test_a_run_split_anywhere_and_carried_on_is_the_whole_run_exactly(split: int) -> None:
    bars = _bars(300)
    open_, close = bars["open"].to_numpy(), bars["close"].to_numpy()
    wanted = np.random.default_rng(split).integers(-1, 2, 300).astype(np.int8)
    config = BacktestConfig(initial_capital=10_000.0, commission=0.002, slippage=0.001, fraction=0.5)
    whole = simulate(open_, close, wanted, config)
    first = simulate(open_[:split], close[:split], wanted[:split],
                     BacktestConfig(**{**config.to_dict(), "close_at_end": False}))
    pos = first.open_position
    held = {} if pos is None else {"cash": pos["cash"], "side": pos["side"], "size": pos["size"],
                                   "entry_price": pos["entry_price"], "commission": pos["commission"],
                                   "entry_bar": pos["entry_bar"] - split}
    opening = Opening(**{"cash": float(first.equity[-1]), **held, "wanted_before": int(wanted[split - 1])})
    rest = simulate(open_[split:], close[split:], wanted[split:], config, opening=opening)
    assert np.concatenate([first.equity, rest.equity]).tolist() == whole.equity.tolist()
    assert np.concatenate([first.shares, rest.shares]).tolist() == whole.shares.tolist()
    for column in ("side", "size", "entry_price", "exit_price", "pnl", "commission", "bars_held"):
        assert np.concatenate([first.trades[column], rest.trades[column]]).tolist() == whole.trades[column].tolist()
    assert (np.concatenate([first.trades["exit_bar"], rest.trades["exit_bar"] + split]).tolist()
            == whole.trades["exit_bar"].tolist())


@pytest.mark.parametrize("fields", [
    {"cash": math.nan}, {"size": 0}, {"side": 0}, {"side": 2}, {"entry_bar": 0}, {"entry_price": 0.0},
    {"commission": -1.0}, {"wanted_before": 3}])
def test_an_impossible_opening_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        carried(**fields)


def _turning(closes: list[float]) -> pd.DataFrame:
    index = pd.date_range("2024-01-01", periods=len(closes), freq="h", tz="UTC", name="timestamp")
    c = np.asarray(closes, dtype=np.float64)
    return pd.DataFrame({"open": c, "high": c, "low": c, "close": c, "volume": 1000.0}, index=index)


FAST_SLOW = with_parameters(load_strategy("sma_crossover"), {"fast": 2, "slow": 4})
# Warm-up for a 4-bar average, and one bar more: the strategy decides on the bar before the window.
WARM = warmup_bars(FAST_SLOW) + 1
CARRY_LONG = CarryIn(cash=500.0, position=CarriedPosition(side=1, size=40, entry_price=11.0, commission=0.44,
                                                            entry_time="2023-12-31T20:00:00Z", bars_held=5))
CHEAP = BacktestConfig(commission=0.01, slippage=0.0, timeframe="1h")


def test_a_rule_strategy_keeps_a_carried_long_until_its_own_exit_signal() -> None:
    # Rising into the window: no cross below on the bar before it, the long is held on.
    bars = _turning([10, 11, 12, 13, 14, 15, 16, 17, 12, 11, 10])
    assert WARM == 5
    config = replace(CHEAP, initial_capital=500.0 + 40 * 14)
    result = run_backtest(bars, FAST_SLOW, config, trade_from=WARM, carry_in=CARRY_LONG)
    t = result.trades_frame()
    assert len(t) == 1 and t["entry_bar"].tolist() == [-5] and t["entry_price"].tolist() == [11.0]
    assert t["entry_time"].tolist() == [pd.Timestamp("2023-12-31T20:00:00Z")]
    # Fast crosses below slow at the close of the window's bar 3 (12 after 17): sold at bar 4's open.
    assert t["exit_bar"].tolist() == [4] and t["exit_price"].tolist() == [11.0] and t["bars_held"].tolist() == [9]
    assert t["commission"].tolist() == [0.44 + 40 * 11.0 * 0.01]
    assert result.equity[0] == 500.0 + 40 * 15  # held through the first bar: no fill, no fee
    assert result.carry_in == CARRY_LONG.model_dump(mode="json")


def test_a_rule_strategy_that_exits_on_the_bar_before_the_window_closes_the_carried_long_at_its_first_open() -> None:
    # Down to 8 on the bar before the window: the 2-bar average crosses below the 4-bar one there.
    bars = _turning([10, 11, 12, 13, 8, 9, 10, 11])
    config = replace(CHEAP, initial_capital=500.0 + 40 * 8)
    result = run_backtest(bars, FAST_SLOW, config, trade_from=WARM, carry_in=CARRY_LONG)
    fee = 40 * 9.0 * 0.01
    assert result.trades["exit_bar"].tolist() == [0] and result.trades["exit_price"].tolist() == [9.0]
    assert result.trades["commission"].tolist() == [0.44 + fee]
    assert result.trades["pnl"].tolist() == [40 * (9.0 - 11.0) - 0.44 - fee]
    assert result.equity.tolist() == [500.0 + 40 * 9.0 - fee] * 3
    assert result.metrics["initial_capital"] == 500.0 + 40 * 8  # returns from the equity carried in


def test_a_long_only_strategy_closes_a_carried_short_at_its_first_open() -> None:
    short = CarryIn(cash=1000.0, position=CarriedPosition(side=-1, size=10, entry_price=12.0, commission=0.1,
                                                            entry_time="2023-12-31T20:00:00Z", bars_held=2))
    bars = _turning([10, 11, 12, 13, 14, 15, 16, 17])
    result = run_backtest(bars, FAST_SLOW, replace(CHEAP, initial_capital=1000.0 - 10 * 14), trade_from=WARM,
                          carry_in=short)
    assert result.trades["side"].tolist() == [-1] and result.trades["exit_bar"].tolist() == [0]


def test_carried_in_capital_must_be_the_equity_at_the_last_close_before_the_window() -> None:
    bars = _turning([10, 11, 12, 13, 14, 15, 16, 17])
    with pytest.raises(ValueError, match=r"capital 1000.0 is not the equity carried in: .* = 1060.0"):
        run_backtest(bars, FAST_SLOW, replace(CHEAP, initial_capital=1000.0), trade_from=WARM, carry_in=CARRY_LONG)


def test_a_carried_result_keeps_what_it_went_on_from_and_says_what_to_go_on_with() -> None:
    bars = _turning([10, 11, 12, 13, 14, 15, 16, 17])
    config = replace(CHEAP, initial_capital=500.0 + 40 * 14, close_at_end=False)
    result = run_backtest(bars, FAST_SLOW, config, trade_from=WARM, carry_in=CARRY_LONG)
    back = BacktestResult.from_json_bytes(result.to_json_bytes())
    assert back.carry_in == result.carry_in == CARRY_LONG.model_dump(mode="json")
    # Still open: the next run is given the same position, held 3 bars longer, and this run's end.
    assert result.carry_out() == {"capital": 500.0 + 40 * 17, "carry_in": {"cash": 500.0, "position": {
        "side": 1, "size": 40, "entry_price": 11.0, "commission": 0.44, "bars_held": 8,
        "entry_time": "2023-12-31T20:00:00+00:00"}}}
    # A run that started flat stores no carry_in: its document is what it was before carrying existed.
    fresh = run_backtest(bars, FAST_SLOW, replace(CHEAP, close_at_end=False), trade_from=WARM)
    assert fresh.carry_in is None and b"carry_in" not in fresh.to_json_bytes()
    assert fresh.carry_out() == {"capital": fresh.equity[-1], "carry_in": {}}
