"""What the operations layer answers when a request fails: one table, whichever transport carried it.

The status API (every route, and :class:`coordinator.api.SubmitEndpoint`) and the NATS service
``ktrdr.ops.*`` turn every failure into an :class:`OpError` with :func:`op_error`, so the same
mistake gets the same status code over HTTP and over NATS:

==========================================  ==================  ======
what went wrong                             error               status
==========================================  ==================  ======
body or payload is not JSON                 MalformedBody       400
JSON nested deeper than ``MAX_JSON_DEPTH``  MalformedBody       400
a field fails its model (pydantic)          InvalidRequest      422
admission refused it (``Rejected``)         InvalidRequest      422
params over ``subjects.limits``             TooLarge            422
unknown operation (or worker) id            NotFound            404
id already used / op in the wrong state     Conflict            409
JetStream electing a leader past budget     Unavailable         503 (+ Retry-After)
nobody answered a request we forwarded      NoAnswer            504
anything else                               Internal            500
==========================================  ==================  ======

Params over the limits are a 422, not a 413: the body was read and parsed (the 413 belongs to
:class:`coordinator.guard.ApiGuard`'s cap on the bytes of a request, which NATS enforces with its own
max payload); what is wrong is one field's value, named in ``detail``, as for any other invalid field.

The JSON body is the same over both: ``{"error": ..., "code": ..., "detail": [{"field", "message"}],
"retry_after": ...}`` (``detail`` and ``retry_after`` only where they apply). HTTP sends it with the
status code (and a ``Retry-After`` header); NATS with the service error headers (``Nats-Service-Error``,
``Nats-Service-Error-Code``, via ``nats.micro``) and the same ``Retry-After`` header.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, TypeVar

from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from coordinator.health import RETRY_AFTER_S, unavailable_message
from coordinator.operations import OperationExists
from ktrdr.errors import FieldError, FieldTooLarge
from ktrdr.runtime.retry import transient_js_error
from subjects.models import json_too_deep

M = TypeVar("M", bound=BaseModel)


class OpError(Exception):
    """A failed request, as every transport answers it: ``status`` (an HTTP status code, also the NATS
    service error code), a message, and optionally the fields at fault and when to try again."""

    status: ClassVar[int] = 500
    # The ``reason`` label of ``ktrdr_rejected_messages`` for errors that are bad input (None: not counted).
    reject_reason: ClassVar[str | None] = None

    def __init__(self, message: str, *, field: str | None = None, detail: list[dict[str, Any]] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if detail is None and field is not None:
            detail = [{"field": field, "message": message}]
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "code": self.status}
        if self.detail is not None:
            out["detail"] = self.detail
        if self.retry_after is not None:
            # In the body too, for clients that read only that.
            out["retry_after"] = self.retry_after
        return out

    def encode(self) -> bytes:
        return json.dumps(self.body()).encode()

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class MalformedBody(OpError):
    """The body is not JSON at all."""

    status = 400
    reject_reason = "invalid"


class InvalidRequest(OpError):
    """Parsed, but a field is wrong: ``detail`` names it."""

    status = 422
    reject_reason = "invalid"


class TooLarge(InvalidRequest):
    """Params over ``subjects.limits`` (see the module's note on 422 rather than 413)."""

    reject_reason = "too large"


class NotFound(OpError):
    status = 404


class Conflict(OpError):
    status = 409


class Unavailable(OpError):
    """JetStream could not take the write within its budget: nothing is wrong with the request."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(message, retry_after=retry_after)


class NoAnswer(OpError):
    status = 504


class Internal(OpError):
    status = 500


def validation_detail(exc: ValidationError, *, prefix: str = "") -> list[dict[str, Any]]:
    # A check of the whole model (which fields go together) has no location: it is the body's, or the params'.
    return [{"field": prefix + ".".join(str(p) for p in e["loc"]) if e["loc"] else prefix.rstrip(".") or "body",
             "message": e["msg"]} for e in exc.errors()]


def invalid(exc: ValidationError, *, prefix: str = "") -> InvalidRequest:
    """A 422 naming the first field that failed (``prefix`` places it, e.g. ``params.``)."""
    detail = validation_detail(exc, prefix=prefix)
    where = detail[0]["field"] or "body"
    return InvalidRequest(f"invalid {where}: {detail[0]['message']}", detail=detail)


def op_error(exc: BaseException, *, nc: Client | None = None) -> OpError:
    """The one table: what the operations layer answers for ``exc``, over HTTP and NATS alike."""
    if isinstance(exc, OpError):
        return exc
    # A field error of the domain (ktrdr.errors): mapped here, and only here.
    if isinstance(exc, FieldTooLarge):
        return TooLarge(str(exc), detail=[{"field": exc.field, "message": exc.message}])
    if isinstance(exc, FieldError):
        return InvalidRequest(str(exc), detail=[{"field": exc.field, "message": exc.message}])
    if isinstance(exc, ValidationError):
        # Raised by admission, which validates the params against their type's model.
        return invalid(exc, prefix="params.")
    if isinstance(exc, OperationExists):
        return Conflict(str(exc))
    if transient_js_error(exc, nc=nc):
        return Unavailable(unavailable_message(exc))
    return Internal(f"internal error: {exc}")


def check_depth(body: bytes) -> None:
    """A 400 naming the limit for a body nested deeper than ``subjects.limits.MAX_JSON_DEPTH``, before
    any parser descends into it (``subjects.models.json_too_deep``)."""
    problem = json_too_deep(body)
    if problem is not None:
        raise MalformedBody(f"request body refused: {problem}")


def parse_body(model: type[M], body: bytes) -> M:
    """A request body (HTTP) or payload (NATS) parsed and validated in one step: 400 if it is not JSON,
    422 naming the field if it does not fit ``model``. An empty body is ``{}``."""
    if not body.strip():
        body = b"{}"
    check_depth(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise MalformedBody(f"request body is not valid JSON: {first['msg']}") from None
        raise invalid(exc) from None


def parse(model: type[M], data: Any) -> M:
    """Already-decoded JSON validated against ``model`` (422 naming the field)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
