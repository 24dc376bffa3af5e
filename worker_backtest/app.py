from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from worker_backtest.handler import BacktestHandler


def build_worker(settings: WorkerSettings) -> Worker:
    return Worker(settings=settings, worker_type="backtest",
                  capabilities=[names.CAP_BACKTEST_CPU, names.CAP_DUMMY_ANY],
                  handlers={names.KIND_BACKTEST: BacktestHandler(settings.data_dir),
                            names.KIND_DUMMY: run_dummy}, slots=1)
