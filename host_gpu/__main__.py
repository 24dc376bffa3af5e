"""``python -m host_gpu``."""

from ktrdr.runtime.entry import run_worker

if __name__ == "__main__":
    # By module name: it loads torch, which must wait until the thread pools are sized.
    raise SystemExit(run_worker("host_gpu.app"))
