"""Interactive Brokers market-data access: limits, pacing, the ib_insync client and the downloader."""

from ktrdr.ib.client import ConnectionState, ContractInfo, IbClient
from ktrdr.ib.downloader import Downloader, DownloadGaveUp, DownloadResult, DownloadState, Mode, Reconnect, StoredRange
from ktrdr.ib.errors import (
    ConnectionLost,
    IbError,
    NoData,
    NoSecurityDefinition,
    NotConnected,
    PacingViolation,
    RequestTimedOut,
)
from ktrdr.ib.pacing import PACING_BACKOFF, Pacer, PacingBudget, PacingRules, PacingWait, Penalty

__all__ = [
    "PACING_BACKOFF",
    "ConnectionLost",
    "ConnectionState",
    "ContractInfo",
    "DownloadGaveUp",
    "DownloadResult",
    "DownloadState",
    "Downloader",
    "IbClient",
    "IbError",
    "Mode",
    "NoData",
    "NoSecurityDefinition",
    "NotConnected",
    "Pacer",
    "PacingBudget",
    "PacingRules",
    "PacingViolation",
    "PacingWait",
    "Penalty",
    "Reconnect",
    "RequestTimedOut",
    "StoredRange",
]
