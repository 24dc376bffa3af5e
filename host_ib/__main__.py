"""``python -m host_ib``."""

from host_ib.settings import IbSettings
from ktrdr.runtime.entry import run_worker

if __name__ == "__main__":
    raise SystemExit(run_worker("host_ib.app", IbSettings, slots=2))
