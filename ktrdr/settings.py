"""Settings read from ``KTRDR_*`` environment variables: one object per process.

Each process type subclasses :class:`CommonSettings`; the subclass is the only settings object
that process builds (``coordinator.settings``, ``ktrdr.runtime.settings``, the CLI's).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def default_home() -> Path:
    return Path(os.environ.get("KTRDR_HOME", Path.home() / ".ktrdr"))


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KTRDR_", extra="ignore")

    nats_url: str = DEFAULT_NATS_URL
    home: Path = Field(default_factory=default_home)
    # Lease timing is a property of the shared ``workers`` bucket (its TTL), so every process
    # must agree on it; the first process to create the bucket fixes it.
    lease_ttl_s: float = Field(default=5.0, gt=0)
    heartbeat_s: float = Field(default=1.0, gt=0)
    # The IB host's active-instance lock lives in a bucket with this TTL; the coordinator makes it.
    ib_lock_ttl_s: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    # JetStream replicas for the streams and buckets ktrdr creates: 3 on a three-node cluster.
    js_replicas: int = Field(default=1, ge=1, le=5)
    # This process's NATS credential (an nkey seed file) and the CA that signed the server's TLS
    # certificate. Unset: the files ``ktrdr up`` wrote under ``<home>/auth`` and ``<home>/tls``.
    nats_creds: Path | None = None
    nats_ca: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The local market-data store (``ktrdr.data.DataStore``); workers cache the ``data`` bucket here."""
        return self.home / "data"

    @property
    def auth_dir(self) -> Path:
        return self.home / "auth"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def hostname(self) -> str:
        return socket.gethostname()
