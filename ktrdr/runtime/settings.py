"""Settings of a worker process (every worker type and host)."""

from __future__ import annotations

from pathlib import Path

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

    # --- the Interactive Brokers host (host_ib) ---------------------------------------------------
    ib_host: str = "127.0.0.1"
    ib_port: int = Field(default=4002, ge=1, le=65535)  # IB Gateway paper; TWS paper is 7497
    ib_client_id: int = Field(default=1, ge=0)
    ib_connect_timeout_s: float = Field(default=4.0, gt=0)
    ib_request_timeout_s: float = Field(default=60.0, gt=0)
    # Reconnect back-off while the gateway is away: starts here, doubles, capped at the max.
    ib_reconnect_min_s: float = Field(default=1.0, gt=0)
    ib_reconnect_max_s: float = Field(default=30.0, gt=0)
    # How long one download waits for the gateway to come back before failing the op.
    ib_reconnect_give_up_s: float = Field(default=900.0, gt=0)
    # The active-instance lock (its TTL is a common setting: the coordinator makes the bucket):
    # how often the active host refreshes it and how often a standby looks at it.
    ib_lock_refresh_s: float = Field(default=1.0, gt=0)
    ib_standby_poll_s: float = Field(default=0.5, gt=0)
    # IB's historical-data pacing rules (defaults are IB's published limits).
    ib_pacing_max_requests: int = Field(default=60, ge=1)
    ib_pacing_window_s: float = Field(default=600.0, gt=0)
    ib_pacing_per_contract: int = Field(default=6, ge=1)
    ib_pacing_contract_window_s: float = Field(default=2.0, gt=0)
    ib_pacing_identical_s: float = Field(default=15.0, ge=0)
    ib_pacing_backoff_s: float = Field(default=60.0, gt=0)  # after a 100/162/420, doubled per repeat
    # Request-reply (ib.bars): answer "retry later" instead of holding a request longer than this.
    ib_request_max_wait_s: float = Field(default=5.0, ge=0)
    # Where downloaded bars are stored (default: the shared data_dir), and how often a running download
    # republishes its dataset to the shared ``data`` bucket (always at the end; 0: every segment).
    ib_data_dir: Path | None = None
    ib_publish_interval_s: float = Field(default=30.0, ge=0)
