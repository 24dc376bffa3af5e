"""One table of errors (``coordinator.errors``): the same bad input gets the same status code, and the
same JSON body, over the status API and over the NATS service ``ktrdr.ops.*``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import ServiceUnavailableError
from pydantic import ValidationError

from coordinator import admission, errors
from coordinator.app import Coordinator
from coordinator.operations import OperationExists
from subjects import names
from subjects.params import BacktestParams
from tests.backtesting import backtest_params

SUBMIT = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"
GET = f"{names.SERVICE_GROUP}.{names.SERVICE_GET}"


def over_nats(reply: Any) -> tuple[int, dict[str, Any]]:
    assert reply.headers and "Nats-Service-Error" in reply.headers, reply.data
    body = json.loads(reply.data)
    assert reply.headers["Nats-Service-Error"] == body["error"]
    code = int(reply.headers["Nats-Service-Error-Code"])
    assert body["code"] == code
    return code, body


# (what, submit body, status, the field named in detail or None)
BAD_SUBMISSIONS = [
    ("invalid params field", json.dumps({"type": "backtesting", "params": backtest_params(timeframe="7m")}),
     422, "params.timeframe"),
    ("unknown strategy", json.dumps({"type": "backtesting", "params": backtest_params(strategy="no_such_strategy")}),
     422, "strategy"),
    ("oversized params", json.dumps({"type": "dummy", "params": {"duration": 0, "fail": "x" * 70_000}}),
     422, "params.fail"),
    ("unknown op type", json.dumps({"type": "nope", "params": {}}), 422, "type"),
    ("walk-forward without folds", json.dumps({"type": "walkforward", "params": backtest_params(grid={"fast": [5]})}),
     422, "params"),
    ("walk-forward of a rule-based strategy without a grid",
     json.dumps({"type": "walkforward", "params": backtest_params(folds=3)}), 422, "grid"),
    ("a param of the wrong type", json.dumps({"type": "dummy", "params": {"duration": "abc"}}), 422,
     "params.duration"),
    ("not JSON", "not json at all", 400, None),
]


@pytest.mark.parametrize(("what", "body", "status", "field"), BAD_SUBMISSIONS, ids=[b[0] for b in BAD_SUBMISSIONS])
async def test_the_same_bad_submission_gets_the_same_answer_over_http_and_nats(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client,
        what: str, body: str, status: int, field: str | None) -> None:
    http = await api.post("/api/v1/operations", content=body, headers={"content-type": "application/json"})
    code, nats_body = over_nats(await nc.request(SUBMIT, body.encode(), timeout=5))
    assert http.status_code == code == status, (what, http.text, nats_body)
    assert http.json() == nats_body
    if field is not None:
        assert nats_body["detail"][0]["field"] == field
        # The field as a user writes it (params.duration), never a Python tuple (('duration',)).
        assert nats_body["error"].startswith(f"invalid {field}: ")
    assert list(coordinator.ops.all()) == []


async def test_the_backtest_route_answers_a_bad_strategy_with_the_same_code(
        api: httpx.AsyncClient, nc: Client) -> None:
    params = backtest_params(strategy="no_such_strategy")
    http = await api.post("/api/v1/backtests", json=params)
    code, body = over_nats(await nc.request(SUBMIT, json.dumps({"type": "backtesting", "params": params}).encode(),
                                            timeout=5))
    assert http.status_code == code == 422
    assert http.json()["error"] == body["error"]


async def test_an_unknown_op_id_is_a_404_everywhere(api: httpx.AsyncClient, nc: Client) -> None:
    http = await api.get("/api/v1/operations/nope")
    code, body = over_nats(await nc.request(GET, b'{"op_id": "nope"}', timeout=5))
    assert http.status_code == code == 404
    assert http.json() == body == {"error": "unknown operation nope", "code": 404}
    assert (await api.get("/api/v1/operations/nope/results")).status_code == 404


async def test_a_duplicate_op_id_is_a_409_everywhere(api: httpx.AsyncClient, nc: Client) -> None:
    submit = {"type": "dummy", "params": {"duration": 30}, "op_id": "dup-1"}
    assert (await api.post("/api/v1/operations", json=submit)).status_code == 201
    # Another submission under the id (the same one again is answered with the op: test_idempotent_submit.py).
    other = {**submit, "params": {"duration": 31}}
    http = await api.post("/api/v1/operations", json=other)
    code, body = over_nats(await nc.request(SUBMIT, json.dumps(other).encode(), timeout=5))
    assert http.status_code == code == 409
    assert http.json() == body


async def test_bad_input_over_nats_is_counted_as_rejected(coordinator: Coordinator, nc: Client) -> None:
    def rejected(reason: str) -> float:
        return coordinator.metrics.rejected.labels(subject=SUBMIT, reason=reason)._value.get()

    await nc.request(SUBMIT, b"not json", timeout=5)
    await nc.request(SUBMIT, json.dumps({"type": "dummy", "params": {"fail": "x" * 70_000}}).encode(), timeout=5)
    assert rejected("invalid") == 1 and rejected("too large") == 1


def test_the_table() -> None:
    def status(exc: BaseException) -> int:
        return errors.op_error(exc).status

    try:
        BacktestParams.model_validate({"strategy": "x"})
    except ValidationError as exc:
        invalid = exc
    assert status(errors.MalformedBody("x")) == 400
    assert status(invalid) == 422 and errors.op_error(invalid).detail[0]["field"].startswith("params.")
    assert status(admission.Rejected("strategy", "nope")) == 422
    too_large = errors.op_error(admission.TooLarge("params.fail", "over 64 Ki"))
    assert isinstance(too_large, errors.TooLarge) and too_large.status == 422
    assert too_large.detail == [{"field": "params.fail", "message": "too large: over 64 Ki"}]
    assert status(OperationExists("operation a already exists")) == 409
    unavailable = errors.op_error(ServiceUnavailableError())
    assert unavailable.status == 503 and unavailable.headers == {"Retry-After": "2"}
    assert unavailable.body()["retry_after"] == 2
    assert status(nats.errors.TimeoutError()) == 503
    assert status(RuntimeError("boom")) == 500
    assert errors.op_error(RuntimeError("boom")).body() == {"error": "internal error: boom", "code": 500}
