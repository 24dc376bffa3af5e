"""What a call to the platform can fail with: an answer that refuses it, or no answer at all."""

from __future__ import annotations

import json
import re

from nats.aio.msg import Msg
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from ktrdr import errors

# An error the platform answered with (unknown id, invalid request...) or no answer at all: the root
# of ktrdr's errors (ktrdr.errors).
KtrdrError = errors.KtrdrError
# A request refused, before it was sent (``ktrdr.client.requests``) or by the coordinator's admission
# (its 422); ``field`` names the part at fault (``strategy``, ``objective.metric``...).
Invalid = errors.FieldError


def service_error(msg: Msg) -> KtrdrError | None:
    """The error a NATS micro service answered with (``Nats-Service-Error`` and ``-Code``), else None.

    Both of ktrdr's services always send a code; an error without a usable one counts as the service's own (500).
    A 422 whose body names the field at fault (the coordinator's admission refusing a request) is :class:`Invalid`.
    """
    if not msg.headers or ERROR_HEADER not in msg.headers:
        return None
    code = msg.headers.get(ERROR_CODE_HEADER, "")
    if code == "422":
        detail = _first_detail(msg.data)
        if detail is not None:
            return Invalid(*detail)
    return KtrdrError(msg.headers[ERROR_HEADER], int(code) if code.isdigit() else 500)


def _first_detail(body: bytes | None) -> tuple[str, str] | None:
    try:
        first = json.loads(body or b"")["detail"][0]
        field, message = first["field"], first["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return (field, message) if isinstance(field, str) and isinstance(message, str) else None


DENIED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class Unanswered(KtrdrError):
    """A request that got no answer at all: it timed out or the connection dropped under it. For a
    submission the op may or may not exist, so it is sent again under the same op id."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 504)


class NoCoordinator(KtrdrError):
    """Nobody answers the coordinator's service: not running, or (just after a reconnect) not yet
    subscribed again. The request reached no one, so sending it again is always safe."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


class JetStreamUnavailable(KtrdrError):
    """The coordinator answered 503: JetStream could not take the write within its budget."""

    def __init__(self) -> None:
        super().__init__("the platform is electing a leader (JetStream unavailable); try again", 503)


