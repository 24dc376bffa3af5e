from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestConfig, BacktestResult, run_backtest, simulate
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.data import synth
from ktrdr.strategy import load_strategy

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
