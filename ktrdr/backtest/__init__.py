"""The vectorised backtest engine, its metrics, parameter sweeps and plots."""

from ktrdr.backtest.config import BacktestConfig
from ktrdr.backtest.engine import run_backtest
from ktrdr.backtest.metrics import compute_metrics
from ktrdr.backtest.result import BacktestResult
from ktrdr.backtest.simulator import Simulation, simulate

__all__ = ["BacktestConfig", "BacktestResult", "Simulation", "compute_metrics", "run_backtest", "simulate"]
