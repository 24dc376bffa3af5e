"""Settings of the coordinator process."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from ktrdr.runtime.topology import StoreLimits
from ktrdr.security.api_token import check_token, load_or_create_token
from ktrdr.settings import CommonSettings
from subjects import limits
from subjects.limits import NATS_MAX_PAYLOAD

# The listen addresses that mean "every interface": not a name a client puts in its Host header.
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# Under NATS's default 1 MB max payload with room to spare: a submitted body becomes an op
# record (params plus status, timestamps, progress) and a job message, and a cancel body a
# request on ops.<id>.cancel; re-encoding never makes JSON longer than what was received.
DEFAULT_MAX_BODY_BYTES = NATS_MAX_PAYLOAD // 2


def host_name(host: str) -> str:
    """``host`` as compared with a Host header: lower case, no port, IPv6 in brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address
        return f"[{host}]"
    return host.partition(":")[0]


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class CoordinatorSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_enabled: bool = True
    # The bearer token every status API route but /health needs (KTRDR_API_TOKEN). Unset: the one
    # in api_token_file (default <home>/auth/api.token), created with a random one if absent.
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    # A second, read-only token (the API's viewer role): GET routes only. Same resolution, default
    # file <home>/auth/api-viewer.token.
    api_viewer_token: SecretStr | None = None
    api_viewer_token_file: Path | None = None
    # False opens GET /metrics to a Prometheus scraper that has no token; the data is aggregate.
    metrics_auth: bool = True
    # Host header names the API answers to, against DNS rebinding (a port in them is ignored).
    # Empty: the loopback names plus api_host unless it is a wildcard; "*" turns the check off.
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Browser origins allowed to call the API (CORS). Empty: any cross-origin request is refused.
    api_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # Addresses of TLS proxies in front of the API whose X-Forwarded-Proto is believed: a request they
    # say came over https gets the https origin and a Secure dashboard cookie. Empty: no proxy's.
    api_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    gpu_fallback_timeout_s: float = Field(default=30.0, ge=0)
    max_attempts: int = Field(default=2, ge=1, le=10)
    # After a restart, running ops whose worker shows no lease within this long are reaped.
    startup_grace_s: float | None = None
    # How long the coordinator waits for a running op's worker to answer a cancel before it
    # answers itself (the worker's reply, when it comes, reaches the requester first).
    cancel_fallback_reply_s: float = Field(default=0.5, ge=0)
    # How often the coordinator checks that every stream and bucket exists, recreating the missing.
    topology_check_s: float = Field(default=5.0, gt=0)
    # How long a submission retries writes that a JetStream leader election interrupts before the
    # API answers 503 (Retry-After) and the NATS service its 503 service error. Longer than the
    # longest election: nats-server's followers wait 4 to 9 s for a lost leader, then campaign for up
    # to 0.8 s; at 5 s, losing the node that led the ops bucket answered 503s for about 2 s of
    # submissions (tests/coordinator/test_cluster_drills.py).
    write_retry_budget_s: float = Field(default=12.0, ge=0)
    # The index of every op record (coordinator.history): an SQLite file, default <home>/ops-index.sqlite3.
    ops_index: Path | None = None
    # Ended ops kept in memory besides the live ones (the rest are read from the index).
    recent_ops: int = Field(default=5000, ge=0, le=1_000_000)
    # Retention (coordinator.retention): ended ops older than this leave the ops bucket; 0 keeps them.
    retention_days: float = Field(default=30.0, ge=0)
    # What leaving means: "archive" (kept in the OPS_ARCHIVE stream, readable by id and by date,
    # their results kept) or "delete" (record, results and checkpoints deleted).
    retention_action: Literal["archive", "delete"] = "archive"
    # How long the archive keeps a record (its results go with it); 0: as long as the disk allows.
    archive_days: float = Field(default=365.0, ge=0)
    # How often retention runs.
    prune_interval_s: float = Field(default=3600.0, gt=0)
    # Byte limits of the buckets and object stores (subjects.limits says why each is its size); a
    # full one refuses new writes. KTRDR_DATA_MAX_BYTES and so on.
    workers_max_bytes: int = Field(default=limits.WORKERS_MAX_BYTES, ge=limits.MIB)
    claims_max_bytes: int = Field(default=limits.CLAIMS_MAX_BYTES, ge=limits.MIB)
    ops_max_bytes: int = Field(default=limits.OPS_BUCKET_MAX_BYTES, ge=64 * limits.MIB)
    # The OPS stream of progress and events (KTRDR_OPS_STREAM_MAX_BYTES).
    ops_stream_max_bytes: int = Field(default=limits.OPS_MAX_BYTES, ge=4 * limits.MIB)
    data_max_bytes: int = Field(default=limits.DATA_MAX_BYTES, ge=limits.MIB)
    results_max_bytes: int = Field(default=limits.RESULTS_MAX_BYTES, ge=limits.MIB)
    models_max_bytes: int = Field(default=limits.MODELS_MAX_BYTES, ge=limits.MIB)
    checkpoints_max_bytes: int = Field(default=limits.CHECKPOINTS_MAX_BYTES, ge=limits.MIB)

    _split_lists = field_validator("api_allowed_hosts", "api_allowed_origins", mode="before")(_comma_list)
    _split_proxies = field_validator("api_trusted_proxies", mode="before")(_comma_list)

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        # An address, not a name: the check compares the connection's peer, which is one.
        return [str(ipaddress.ip_address(v.strip("[]"))) for v in value]

    @field_validator("api_token", "api_viewer_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token(value.get_secret_value(), source="KTRDR_API_TOKEN")
        return value

    @field_validator("api_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # Browsers send an Origin as scheme://host[:port], lower case, no path.
        return [o.strip().lower().rstrip("/") for o in value]

    @model_validator(mode="after")
    def _derived_defaults(self) -> CoordinatorSettings:
        if self.ops_index is None:
            self.ops_index = self.home / "ops-index.sqlite3"
        if self.api_token_file is None:
            self.api_token_file = self.home / "auth" / "api.token"
        if self.api_viewer_token_file is None:
            self.api_viewer_token_file = self.api_token_file.with_name("api-viewer.token")
        if self.api_allowed_hosts:
            self.api_allowed_hosts = [h if h == "*" else host_name(h) for h in self.api_allowed_hosts]
        else:
            own = host_name(self.api_host)
            self.api_allowed_hosts = [*LOOPBACK_HOSTS, *([own] if own not in _WILDCARD_HOSTS
                                                         and own not in LOOPBACK_HOSTS else [])]
        return self

    def store_limits(self) -> StoreLimits:
        return StoreLimits(workers=self.workers_max_bytes, claims=self.claims_max_bytes, ops=self.ops_max_bytes,
                           ops_stream=self.ops_stream_max_bytes,
                           data=self.data_max_bytes, results=self.results_max_bytes, models=self.models_max_bytes,
                           checkpoints=self.checkpoints_max_bytes)

    def resolve_api_token(self) -> str:
        """The token the status API checks: KTRDR_API_TOKEN, else the token file's (created if absent)."""
        if self.api_token is not None:
            return self.api_token.get_secret_value()
        assert self.api_token_file is not None
        return load_or_create_token(self.api_token_file)

    def resolve_api_viewer_token(self) -> str:
        """The read-only token: KTRDR_API_VIEWER_TOKEN, else its file's (created if absent)."""
        if self.api_viewer_token is not None:
            return self.api_viewer_token.get_secret_value()
        assert self.api_viewer_token_file is not None
        return load_or_create_token(self.api_viewer_token_file)
