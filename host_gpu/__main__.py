"""``python -m host_gpu``."""

from host_gpu.app import build_worker
from ktrdr.runtime.entry import run_worker

if __name__ == "__main__":
    raise SystemExit(run_worker(build_worker))
