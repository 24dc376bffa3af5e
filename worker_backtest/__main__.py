"""``python -m worker_backtest``."""

from ktrdr.runtime.entry import run_worker

if __name__ == "__main__":
    # By module name: it loads numpy, which must wait until the thread pools are sized.
    raise SystemExit(run_worker("worker_backtest.app", slots=1))
