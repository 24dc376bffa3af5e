"""Interactive Brokers market-data access: limits, pacing, the ib_insync client and the downloader."""

from ktrdr.ib.client import ConnectionState, ContractInfo, IbClient
from ktrdr.ib.downloader import PACING_BACKOFF, Downloader, DownloadResult, DownloadState, Mode, Reconnect, StoredRange
from ktrdr.ib.errors import ConnectionLost, IbError, NoData, NoSecurityDefinition, PacingViolation, RequestTimedOut
from ktrdr.ib.pacing import Pacer, PacingBudget, PacingRules, PacingWait

__all__ = [
    "PACING_BACKOFF",
    "ConnectionLost",
    "ConnectionState",
    "ContractInfo",
    "DownloadResult",
    "DownloadState",
    "Downloader",
    "IbClient",
    "IbError",
    "Mode",
    "NoData",
    "NoSecurityDefinition",
    "Pacer",
    "PacingBudget",
    "PacingRules",
    "PacingViolation",
    "PacingWait",
    "Reconnect",
    "RequestTimedOut",
    "StoredRange",
]
