"""``python -m worker_backtest``."""

from ktrdr.runtime.entry import run_worker
from worker_backtest.app import build_worker

if __name__ == "__main__":
    raise SystemExit(run_worker(build_worker))
