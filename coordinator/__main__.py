"""``python -m coordinator``: run the coordinator (same as ``ktrdr coordinator``)."""

import logging

from coordinator.app import Coordinator, run_until_signal
from coordinator.settings import CoordinatorSettings
from ktrdr.logs import setup_logging
from ktrdr.runtime.connection import NatsConnectError
from ktrdr.runtime.loop import run
from ktrdr.security.credentials import CredentialError

log = logging.getLogger(__name__)


def main() -> int:
    settings = CoordinatorSettings()
    setup_logging(settings.log_level)
    try:
        run(run_until_signal(Coordinator(settings=settings)))
    except (NatsConnectError, CredentialError) as exc:
        log.error("%s", exc)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
