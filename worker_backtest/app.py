from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from worker_backtest.handler import BacktestHandler


def build_worker(settings: WorkerSettings) -> Worker:
    handler = BacktestHandler(settings.data_dir)
    return Worker(settings=settings, worker_type="backtest",
                  capabilities=[names.CAP_BACKTEST_CPU, names.CAP_DUMMY_ANY],
                  handlers={BACKTEST: handler, BACKTEST_BLOCK: handler.run_block, DUMMY: run_dummy}, slots=1)
