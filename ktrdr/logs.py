"""Logging set-up shared by every ktrdr process."""

import logging


class _SslEofNoise(logging.Filter):
    """asyncio warns on every TLS connection closed by its peer (a nats-py close over TLS); it is
    not actionable and would end every CLI command's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def quiet_ssl_eof() -> None:
    logging.getLogger("asyncio").addFilter(_SslEofNoise())


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # nats-py logs every reconnect attempt at INFO; ours are enough.
    logging.getLogger("nats").setLevel(logging.WARNING)
    quiet_ssl_eof()
