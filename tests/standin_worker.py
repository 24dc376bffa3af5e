"""A real worker process whose every operation type runs the dummy handler.

Tests start it as ``python -m tests.standin_worker`` to kill, freeze or SIGTERM a worker, and to
stand in for a GPU host (``KTRDR_GPU=true KTRDR_EXTRA_CAPABILITIES=training.gpu``) on machines
without one. Capabilities come from ``KTRDR_EXTRA_CAPABILITIES``.

``KTRDR_STANDIN_REAL_TRAINING=1`` serves ``training`` with the real training handler (on CPU,
bars under ``$KTRDR_HOME/data``), to kill a worker in the middle of a real training.
``KTRDR_STANDIN_SLOW_BACKTEST_S=<s>`` serves ``backtesting`` and ``backtest_block`` with the real
backtest handler, after holding each job that long: a worker to kill while it holds a sweep's or a walk-forward's child.
"""

from __future__ import annotations

import os
from typing import Any

from ktrdr.dummy import run_dummy
from ktrdr.optypes import OpType, op_types
from ktrdr.optypes.backtest_block import BACKTEST_BLOCK
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.context import Handler, JobContext
from ktrdr.runtime.entry import run_worker
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from tests.support import dummy_standin


def build_worker(settings: WorkerSettings) -> Worker:
    handlers: dict[OpType[Any, Any], Handler] = {
        t: run_dummy if t is DUMMY else dummy_standin for t in op_types() if not t.on_coordinator}
    if os.environ.get("KTRDR_STANDIN_REAL_TRAINING") == "1":
        from worker_training.handler import make_training_handler

        handlers[TRAINING] = make_training_handler(device="cpu", data_root=settings.home / "data")
    hold = os.environ.get("KTRDR_STANDIN_SLOW_BACKTEST_S")
    if hold:
        from worker_backtest.handler import BacktestHandler

        backtest = BacktestHandler(settings.data_dir)

        def slow_backtest(ctx: JobContext, params: Any) -> Any:
            ctx.token.wait(float(hold))
            return backtest(ctx, params)

        def slow_block(ctx: JobContext, params: Any) -> Any:
            ctx.token.wait(float(hold))
            return backtest.run_block(ctx, params)

        handlers[BACKTEST] = slow_backtest
        handlers[BACKTEST_BLOCK] = slow_block
    return Worker(settings=settings, worker_type="standin", capabilities=[], handlers=handlers, slots=1)


if __name__ == "__main__":
    raise SystemExit(run_worker(build_worker))
