"""Pydantic models of every payload on the wire. JSON, each with a ``schema_version``.

Every model ignores unknown fields (so a newer peer may add some) but rejects wrong types and
missing required fields; ``decode()`` turns any bad payload into :class:`BadPayload`, which
receivers log and count instead of crashing.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from subjects.limits import MAX_JSON_DEPTH, MAX_REASON_CHARS, bounded_text
from subjects.names import CAPABILITIES, validate_token

SCHEMA_VERSION = 1
# An artifact name: host, op id (64 chars each), attempt and nonce.
ARTIFACT_NAME_CHARS = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)

    schema_version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


class BadPayload(ValueError):
    """A message that is not JSON or does not match its schema."""


P = TypeVar("P", bound=Payload)


# A JSON string, escapes included: what the depth check skips, since brackets inside one nest nothing.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The error to answer when ``data`` nests arrays and objects more than ``limit`` deep, else None.

    Checked before any parser sees the text: json.loads recurses once per level and would raise
    RecursionError (or crash, far enough down) on a few kilobytes of brackets. Most payloads have
    fewer brackets than the limit and cost two counts; the others have their strings removed and
    their innermost pairs stripped once per level, in C, at most ``limit`` times (no slower than
    parsing them). Brackets left unmatched are invalid JSON, which the parser reports, unless there
    are more than the limit of them, which it would descend into first.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    rest = _JSON_STRING.sub(b"", raw).translate(_AS_SQUARE, _NOT_BRACKETS)
    # A run of more opening brackets than the limit is too deep whatever follows: the usual attack
    # is caught here, before any pass.
    run = b"[" * (limit + 1)
    for _ in range(limit):
        if run in rest:
            break
        shorter = rest.replace(b"[]", b"")
        if len(shorter) == len(rest):
            break
        rest = shorter
    if run in rest or b"[]" in rest or rest.count(b"[") > limit:
        return f"JSON nested deeper than {limit} levels"
    return None


def decode(model: type[P], data: bytes) -> P:
    problem = json_too_deep(data)
    if problem is not None:
        raise BadPayload(f"invalid {model.__name__}: {problem}")
    try:
        return model.model_validate_json(data or b"null")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "payload"
        raise BadPayload(f"invalid {model.__name__}: {where}: {first.get('msg')}") from None


def _op_id(value: str) -> str:
    return validate_token(value, what="operation id")


def new_op_id(op_type: str) -> str:
    """A fresh op id, ``<type>-<12 hex>``: made by the coordinator, or by a client that chooses its
    own so that a submission sent again after a lost answer is recognised as the same op. The whole
    type name: an id says what it is (ids cut to five letters read "data_-", "backt-")."""
    return f"{op_type}-{uuid.uuid4().hex[:12]}"


# --- workers ---------------------------------------------------------------------------------

class WorkerState(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STANDBY = "standby"


class WorkerInfo(Payload):
    """What a worker announces on ``worker.register`` and repeats in its lease."""

    worker_id: str
    worker_type: str
    capabilities: list[str]
    gpu: bool = False
    device_name: str | None = None
    device_memory_mb: int | None = None
    host: str
    pid: int
    version: str
    slots: int = Field(ge=1)
    started_at: datetime

    @field_validator("worker_id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        return validate_token(v, what="worker id")

    @field_validator("capabilities")
    @classmethod
    def _known_capabilities(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}")
        return v


class RunningOp(BaseModel):
    op_id: str
    attempt: int


class WorkerLease(WorkerInfo):
    """The value under the worker's key in the ``workers`` bucket, rewritten on every heartbeat."""

    state: WorkerState = WorkerState.IDLE
    running: list[RunningOp] = Field(default_factory=list)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    lease_ttl_s: float = 5.0
    # Domain status a worker type wants visible (e.g. the IB host's gateway connection).
    status: dict[str, Any] = Field(default_factory=dict)


class RegistrationAck(Payload):
    accepted: bool
    worker_id: str
    message: str = ""


# --- operations ------------------------------------------------------------------------------

class OpStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (OpStatus.COMPLETED, OpStatus.FAILED, OpStatus.CANCELLED)


class Progress(BaseModel):
    model_config = ConfigDict(extra="ignore")

    percentage: float | None = Field(default=None, ge=0, le=100)
    step: str | None = None
    steps_done: int | None = None
    steps_total: int | None = None
    items_done: int | None = None
    items_total: int | None = None
    message: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime = Field(default_factory=utcnow)


class AttemptRecord(BaseModel):
    attempt: int
    worker_id: str | None = None
    route: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    # Offers renewed because one reached MaxDeliver with no worker claiming it (all bounces).
    reoffers: int = 0


class Operation(Payload):
    """The durable record of one operation, the value under its id in the ``ops`` bucket."""

    op_id: str
    type: str
    status: OpStatus = OpStatus.PENDING
    params: dict[str, Any] = Field(default_factory=dict)
    parent_id: str | None = None
    worker_id: str | None = None
    attempt: int = 1
    max_attempts: int = 2
    capability: str | None = None
    route: str | None = None
    route_reason: str | None = None
    offered: list[str] = Field(default_factory=list)  # capabilities offered for this attempt
    offered_at: datetime | None = None
    progress: Progress | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: dict[str, Any] | None = None
    # The write-once artifacts the claimant reported (ktrdr.runtime.artifacts): the full result of
    # the attempt that completed, and the checkpoint the next attempt resumes from.
    result_object: str | None = None
    checkpoint: str | None = None
    error: str | None = None
    # Of a failed handler (ktrdr.errors.failure_of): its error's type, and whether another attempt
    # might have got past it (None: not a handler's failure, or a worker that did not say).
    error_type: str | None = None
    retryable: bool | None = None
    cancel_reason: str | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.completed_at:
            return (self.completed_at - self.started_at).total_seconds()
        return None


class JobMessage(Payload):
    """One offer of an operation on ``jobs.<kind>.<capability>``."""

    op_id: str
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(ge=1)
    capability: str
    parent_id: str | None = None
    offered_at: datetime = Field(default_factory=utcnow)
    # The checkpoint artifact an earlier attempt reported: where this one resumes from.
    checkpoint: str | None = Field(default=None, max_length=ARTIFACT_NAME_CHARS)

    _v = field_validator("op_id")(_op_id)


class ProgressUpdate(Progress, Payload):
    """``ops.<id>.progress``: published by the worker that owns the attempt."""

    op_id: str
    worker_id: str
    attempt: int

    _v = field_validator("op_id")(_op_id)


class OpEventKind(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Facts about the running attempt the record should keep (e.g. the epoch a training resumed
    # from); ``context`` is merged into ``Operation.info``.
    INFO = "info"


class OpEvent(Payload):
    """``ops.<id>.events``: the lifecycle of one attempt."""

    op_id: str
    event: OpEventKind
    worker_id: str
    attempt: int
    timestamp: datetime = Field(default_factory=utcnow)
    result: dict[str, Any] | None = None
    # ``completed``: the result artifact the attempt wrote. ``info``: the checkpoint it wrote last
    # ("" when it stopped counting on one). Names the coordinator accepts only from the host and
    # attempt they name.
    result_object: str | None = Field(default=None, max_length=ARTIFACT_NAME_CHARS)
    checkpoint: str | None = Field(default=None, max_length=ARTIFACT_NAME_CHARS)
    error: str | None = None
    # ``failed``: the type of the handler's error, and whether another attempt may get past it
    # (ktrdr.errors.failure_of). Bounded by the coordinator, as ``error`` is.
    error_type: str | None = None
    retryable: bool = False
    message: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)

    _v = field_validator("op_id")(_op_id)


class Request(Payload):
    """A request a client sends: unknown fields are an error (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class CancelRequest(Request):
    """A reason of any length fits a request, but it is copied into the worker's ``cancelled``
    event and the op record: it is cut to :data:`~subjects.limits.MAX_REASON_CHARS` on decoding."""

    reason: str = "cancelled by user"
    # The reason's length as it arrived, when it was cut (receivers log and count that).
    _truncated_from: int | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _bounded_reason(self) -> CancelRequest:
        if len(self.reason) > MAX_REASON_CHARS:
            self._truncated_from = len(self.reason)
            self.reason = bounded_text(self.reason, MAX_REASON_CHARS)
        return self

    @property
    def truncated_from(self) -> int | None:
        return self._truncated_from


class CancelReply(Payload):
    op_id: str
    accepted: bool
    status: OpStatus | None = None
    message: str


class Claim(Payload):
    """Value of ``claims/<op_id>_<attempt>``; whoever created it owns the attempt."""

    op_id: str
    attempt: int
    worker_id: str
    claimed_at: datetime = Field(default_factory=utcnow)


# --- the coordinator's service ---------------------------------------------------------------

class SubmitRequest(Request):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    parent_id: str | None = None
    op_id: str | None = None  # a client may choose the id (validated); otherwise generated
    max_attempts: int | None = Field(default=None, ge=1, le=10)

    @field_validator("type")
    @classmethod
    def _type_token(cls, v: str) -> str:
        # Whether it is declared is admission's to say (``ktrdr.optypes``): the contract names no types.
        return validate_token(v, what="operation type")

    @field_validator("op_id", "parent_id")
    @classmethod
    def _valid_ids(cls, v: str | None) -> str | None:
        return None if v is None else _op_id(v)


class GetRequest(Request):
    op_id: str


class ListRequest(Request):
    """Operations, newest first. Child operations (a sweep's blocks, a walk-forward's steps) are left
    out unless ``parent_id`` names their parent or ``include_children`` is set; archived ones (past
    the retention period) unless ``include_archived`` is. ``since``/``until`` bound ``created_at``;
    ``q`` is text in the id."""

    status: list[OpStatus] | None = None
    type: str | None = Field(default=None, max_length=64)
    active_only: bool = False
    parent_id: str | None = Field(default=None, max_length=64)
    include_children: bool = False
    worker_id: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    include_archived: bool = False
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)


class OpList(Payload):
    """One page of operations, cut below the payload limit (``subjects.limits.MAX_LIST_PAGE_BYTES``).

    ``truncated``: the page holds fewer than the request's ``limit`` although more match; ask again
    from ``next_offset`` (None once the matching operations are exhausted).
    """

    total: int
    operations: list[Operation]
    offset: int = 0
    next_offset: int | None = None
    truncated: bool = False
    # More than ``total`` match: counting stops there (a million matches are not counted each time).
    total_capped: bool = False


class PruneRequest(Request):
    """Retention on demand: ended ops that completed more than ``older_than`` ago (``7d``, ``12h``,
    ``30m`` or seconds) are archived or deleted (``action``; none: the coordinator's setting)."""

    older_than: str | float = Field(description="an age: 7d, 12h, 30m, 2w, 90s or seconds")
    action: Literal["archive", "delete"] | None = None
    dry_run: bool = False
    limit: int | None = Field(default=None, ge=1, le=10_000_000)


class PruneReply(Payload):
    action: str
    older_than_s: float
    dry_run: bool
    matched: int
    moved: int
    skipped: int = 0
    expired: int = 0
    sample: list[str] = Field(default_factory=list)


class ServiceError(Payload):
    error: str
    code: int = 400
