"""The CLI reads a NATS micro service's error reply one way, whichever service sent it."""

from __future__ import annotations

from nats.aio.msg import Msg

from ktrdr.client.errors import service_error


def reply(headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject="_INBOX.x", data=b"{}", headers=headers)  # type: ignore[arg-type]


def test_service_errors_carry_the_services_code() -> None:
    error = service_error(reply({"Nats-Service-Error": "unknown op", "Nats-Service-Error-Code": "404"}))
    assert error is not None and (str(error), error.code) == ("unknown op", 404)
    assert service_error(reply(None)) is None
    assert service_error(reply({"Other": "x"})) is None
    # Without a usable code, the service failed: the same 500 for the coordinator's and the IB host's.
    for code in ({}, {"Nats-Service-Error-Code": ""}, {"Nats-Service-Error-Code": "oops"}):
        missing = service_error(reply({"Nats-Service-Error": "broken", **code}))
        assert missing is not None and missing.code == 500
