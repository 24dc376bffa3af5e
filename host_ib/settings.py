"""Settings of the Interactive Brokers host: a worker's settings plus IB's (``KTRDR_IB_*``).

The lock's TTL (``KTRDR_IB_LOCK_TTL_S``) is not here: the coordinator creates the lock's bucket
with it, so it is a common setting (:class:`ktrdr.settings.CommonSettings`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import Field

from ktrdr.ib.pacing import PACING_BACKOFF
from ktrdr.runtime.retry import RetryPolicy
from ktrdr.runtime.settings import WorkerSettings


class IbSettings(WorkerSettings):
    ib_host: str = "127.0.0.1"
    ib_port: int = Field(default=4002, ge=1, le=65535)  # IB Gateway paper; TWS paper is 7497
    ib_client_id: int = Field(default=1, ge=0)
    ib_connect_timeout_s: float = Field(default=4.0, gt=0)
    ib_request_timeout_s: float = Field(default=60.0, gt=0)
    # The head-timestamp lookup only trims a download's plan: a gateway that does not answer it
    # costs this, once per contract (the answer, or its absence, is cached).
    ib_head_timeout_s: float = Field(default=5.0, gt=0)
    # Bounds of one download segment: reconnects it survives, and how long it may go without
    # completing whatever holds it (above IB's 10-minute request window plus a request timeout).
    ib_segment_max_reconnects: int = Field(default=3, ge=0)
    ib_segment_stall_s: float = Field(default=900.0, gt=0)
    # The reconnect policy (:meth:`reconnect_policy`): pauses between connection attempts start at
    # the min and double up to the max; a download waits this long in all for IB to come back.
    ib_reconnect_min_s: float = Field(default=1.0, gt=0)
    ib_reconnect_max_s: float = Field(default=30.0, gt=0)
    ib_reconnect_give_up_s: float = Field(default=900.0, gt=0)
    # The active-instance lock: how often the active host refreshes it and how often a standby looks at it.
    ib_lock_refresh_s: float = Field(default=1.0, gt=0)
    ib_standby_poll_s: float = Field(default=0.5, gt=0)
    # IB's historical-data pacing rules (defaults are IB's published limits).
    ib_pacing_max_requests: int = Field(default=60, ge=1)
    ib_pacing_window_s: float = Field(default=600.0, gt=0)
    ib_pacing_per_contract: int = Field(default=6, ge=1)
    ib_pacing_contract_window_s: float = Field(default=2.0, gt=0)
    ib_pacing_identical_s: float = Field(default=15.0, ge=0)
    # The first pause after a pacing error (100/162/420), doubled per repeat (:meth:`pacing_backoff`),
    # and how long after its first violation a download segment stops trying.
    ib_pacing_backoff_s: float = Field(default=PACING_BACKOFF.first_s, gt=0)
    ib_pacing_give_up_s: float = Field(default=PACING_BACKOFF.budget_s or 300.0, gt=0)
    # Request-reply (ib.*): answer "retry later" instead of holding a request for pacing longer than
    # this, and answer within ib_reply_timeout_s in all ("gateway slow" past it); below the 5 s a
    # `nats req` waits by default.
    ib_request_max_wait_s: float = Field(default=5.0, ge=0)
    ib_reply_timeout_s: float = Field(default=4.0, gt=0)
    # Where downloaded bars are stored (default: the shared data_dir), and how often a running download
    # republishes its dataset to the shared ``data`` bucket (always at the end; 0: every segment).
    ib_data_dir: Path | None = None
    ib_publish_interval_s: float = Field(default=30.0, ge=0)

    def reconnect_policy(self) -> RetryPolicy:
        """The host's one IB reconnect policy.

        The :class:`host_ib.gateway.Gateway` is the only one that connects: while the host is active
        it tries again after each of these pauses (a max below the min means pauses of the min, never
        shorter than asked), for as long as it takes. An operation that needs the connection waits
        for it at most ``budget_s`` (``KTRDR_IB_RECONNECT_GIVE_UP_S``), then fails.
        """
        return RetryPolicy(first_s=self.ib_reconnect_min_s, max_s=max(self.ib_reconnect_min_s, self.ib_reconnect_max_s),
                           budget_s=self.ib_reconnect_give_up_s)

    def pacing_backoff(self) -> RetryPolicy:
        """IB's rule after a pacing error, starting at ``KTRDR_IB_PACING_BACKOFF_S`` instead of IB's
        minute; a segment gives up ``KTRDR_IB_PACING_GIVE_UP_S`` after its first violation."""
        return replace(PACING_BACKOFF, first_s=self.ib_pacing_backoff_s,
                       max_s=max(PACING_BACKOFF.max_s, self.ib_pacing_backoff_s), budget_s=self.ib_pacing_give_up_s)

    def segment_reconnects(self) -> RetryPolicy:
        """A segment's tries across lost connections: ``KTRDR_IB_SEGMENT_MAX_RECONNECTS`` + 1. No
        pause of its own: the reconnect policy paces the connection attempts."""
        return RetryPolicy(first_s=0.0, max_s=0.0, attempts=self.ib_segment_max_reconnects + 1)
