"""Settings of the coordinator process."""

from __future__ import annotations

from pydantic import Field

from ktrdr.settings import CommonSettings


class CoordinatorSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_enabled: bool = True
    gpu_fallback_timeout_s: float = Field(default=30.0, ge=0)
    max_attempts: int = Field(default=2, ge=1, le=10)
    # After a restart, running ops whose worker shows no lease within this long are reaped.
    startup_grace_s: float | None = None
    # How long the coordinator waits for a running op's worker to answer a cancel before it
    # answers itself (the worker's reply, when it comes, reaches the requester first).
    cancel_fallback_reply_s: float = Field(default=0.5, ge=0)
