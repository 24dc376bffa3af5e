"""``python -m worker_training``."""

from ktrdr.runtime.entry import run_worker

if __name__ == "__main__":
    # By module name: it loads numpy and torch, which must wait until the thread pools are sized.
    raise SystemExit(run_worker("worker_training.app", slots=1))
