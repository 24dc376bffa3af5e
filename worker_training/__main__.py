"""``python -m worker_training``."""

from ktrdr.runtime.entry import run_worker
from worker_training.app import build_worker

if __name__ == "__main__":
    raise SystemExit(run_worker(build_worker))
