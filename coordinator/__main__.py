"""``python -m coordinator``: run the coordinator (same as ``ktrdr coordinator``)."""

from coordinator.app import Coordinator, run_until_signal
from coordinator.settings import CoordinatorSettings
from ktrdr.logs import setup_logging
from ktrdr.runtime.loop import run


def main() -> None:
    settings = CoordinatorSettings()
    setup_logging(settings.log_level)
    run(run_until_signal(Coordinator(settings=settings)))


if __name__ == "__main__":
    main()
