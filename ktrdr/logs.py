"""Logging set-up shared by every ktrdr process."""

import logging


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # nats-py logs every reconnect attempt at INFO; ours are enough.
    logging.getLogger("nats").setLevel(logging.WARNING)
