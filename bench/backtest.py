"""Backtest throughput: SMA(10, 20) crossover on synthetic 1-minute bars.

Run as ``python bench/backtest.py``. Timed: indicators, signals, simulation and metrics (the
whole ``run_backtest``), best of a few runs; generating the bars is not timed. Then a 500-variant
SMA grid on a year of hourly bars: one ``run_backtest`` per variant against one ``run_block``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ktrdr.backtest import BacktestConfig, run_backtest  # noqa: E402
from ktrdr.backtest.block import run_block  # noqa: E402
from ktrdr.data import synth  # noqa: E402
from ktrdr.strategy import RuleStrategy, load_strategy, with_parameters  # noqa: E402


def main() -> None:
    strategy = load_strategy("sma_crossover")
    # Costs off so every crossover trades for the whole run (with costs a random walk bleeds the
    # account until entries no longer buy a whole share, and the loop over trades would be shorter).
    config = BacktestConfig(timeframe="1m", commission=0.0, slippage=0.0)
    for size in (10_000, 100_000, 1_000_000):
        bars = synth("BENCH", "1m", "2020-01-01", size, seed=42)
        best = float("inf")
        result = None
        for _ in range(5 if size < 1_000_000 else 3):
            t0 = time.perf_counter()
            result = run_backtest(bars, strategy, config)
            best = min(best, time.perf_counter() - t0)
        assert result is not None
        print(f"{size:>9,} bars: {best * 1e3:8.1f} ms  {size / best / 1e6:6.2f} M bars/s  "
              f"trades={result.metrics['trades']}")
    block()


def block() -> None:
    strategy = load_strategy("sma_crossover")
    assert isinstance(strategy, RuleStrategy)
    bars = synth("SYNTH", "1h", "2020-01-01", 8760, seed=1)
    config = BacktestConfig()
    variants = [{"fast": f, "slow": s} for f in range(5, 51, 5) for s in range(20, 217, 4)]
    timings = {}
    for label, run in (("loop", lambda: [run_backtest(bars, with_parameters(strategy, v), config) for v in variants]),
                       ("block", lambda: run_block(bars, strategy, variants, config))):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        timings[label] = best
    print(f"{len(variants)} variants x 8,760 bars: loop {timings['loop'] / len(variants) * 1e3:.3f} ms/variant, "
          f"block {timings['block'] / len(variants) * 1e3:.3f} ms/variant "
          f"({timings['loop'] / timings['block']:.1f}x)")


if __name__ == "__main__":
    main()
