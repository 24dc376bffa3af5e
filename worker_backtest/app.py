from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from worker_backtest.handler import BacktestHandler


def build_worker(settings: WorkerSettings) -> Worker:
    return Worker(settings=settings, worker_type="backtest",
                  capabilities=[names.CAP_BACKTEST_CPU, names.CAP_DUMMY_ANY],
                  handlers={BACKTEST: BacktestHandler(settings.data_dir), DUMMY: run_dummy}, slots=1)
