"""``python -m coordinator``: run the coordinator (same as ``ktrdr coordinator``)."""

import asyncio

from coordinator.app import Coordinator, run_until_signal
from coordinator.settings import CoordinatorSettings
from ktrdr.logs import setup_logging


def main() -> None:
    settings = CoordinatorSettings()
    setup_logging(settings.log_level)
    asyncio.run(run_until_signal(Coordinator(settings=settings)))


if __name__ == "__main__":
    main()
