"""Logging set-up shared by every ktrdr process."""

import logging
from typing import Any

# One log record's text: a rejected 1 MiB message, quoted whole, would otherwise be a 1 MB line in
# every log it reaches. Two thousand characters say what it was.
MAX_LOG_LINE_CHARS = 2_000
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def cap(text: str, limit: int = MAX_LOG_LINE_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more chars)"


class BoundedFormatter(logging.Formatter):
    """Caps a record's message at ``max_chars``, and each line of its traceback too: a traceback's
    frames stay whole (its last line, the exception, is what matters), an exception quoting a whole
    payload does not."""

    def __init__(self, fmt: str | None = FORMAT, *, max_chars: int = MAX_LOG_LINE_CHARS) -> None:
        super().__init__(fmt)
        self.max_chars = max_chars

    def formatMessage(self, record: logging.LogRecord) -> str:
        return cap(super().formatMessage(record), self.max_chars)

    def formatException(self, ei: Any) -> str:
        return self._cap_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._cap_lines(super().formatStack(stack_info))

    def _cap_lines(self, text: str) -> str:
        return "\n".join(cap(line, self.max_chars) for line in text.split("\n"))


class _SslEofNoise(logging.Filter):
    """asyncio warns on every TLS connection closed by its peer (a nats-py close over TLS); it is
    not actionable and would end every CLI command's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def quiet_ssl_eof() -> None:
    logging.getLogger("asyncio").addFilter(_SslEofNoise())


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(BoundedFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # nats-py logs every reconnect attempt at INFO; ours are enough.
    logging.getLogger("nats").setLevel(logging.WARNING)
    quiet_ssl_eof()
