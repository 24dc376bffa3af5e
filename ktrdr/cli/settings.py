"""Settings of the CLI process."""

from __future__ import annotations

from ktrdr.settings import CommonSettings


class CliSettings(CommonSettings):
    request_timeout_s: float = 5.0
