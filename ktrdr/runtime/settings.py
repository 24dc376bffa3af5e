"""Settings of a worker process (every worker type and host).

A host with settings of its own subclasses :class:`WorkerSettings` (the IB host:
``host_ib.settings.IbSettings``) and passes its class to ``ktrdr.runtime.entry.run_worker``.
"""

from __future__ import annotations

from pydantic import Field

from ktrdr.settings import CommonSettings


class WorkerSettings(CommonSettings):
    # Stable across restarts: from configuration, else "<host>-<type>-<index>". Never random,
    # so a restarted worker replaces its own registration instead of adding a duplicate.
    worker_id: str | None = None
    worker_index: int = Field(default=0, ge=0)
    slots: int | None = Field(default=None, ge=1)
    # SIGTERM: let running work finish for this long, then cancel it.
    grace_s: float = Field(default=25.0, ge=0)
    # After cancelling on shutdown, how long to wait for handlers to notice.
    cancel_wait_s: float = Field(default=5.0, ge=0)
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    # Extra capabilities, comma separated (tests use it to make a stand-in GPU worker).
    extra_capabilities: str = ""
    gpu: bool | None = None
    device_name: str | None = None
    device_memory_mb: int | None = None

